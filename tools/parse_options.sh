#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipes after they declare defaults:
#
#   stage=0
#   stop_stage=100
#   . tools/parse_options.sh
#
# Every declared variable becomes a flag: --stop-stage 5 (or --stop-stage=5)
# sets stop_stage=5. An undeclared flag is an error. --help lists the variables
# and their current values. Positional arguments are left in "$@".
#
# Pass-through mode, for a corpus recipe that hands every option it does not declare to
# another script (as ESPnet's run.sh passes "$@" to asr.sh): set, before sourcing,
#
#   PASS_UNKNOWN_OPTIONS=../TEMPLATE/ilt.sh   # upper case: not an option itself
#
# Then an undeclared --flag VALUE (or --flag=VALUE) is kept, in order and unchanged, in the
# array PASSED_OPTIONS, for the recipe to give that script last ("${PASSED_OPTIONS[@]}", so
# they win over the defaults the recipe passes before them). The unknown flag is still an
# error, and before the recipe runs a stage: that script parses PASSED_OPTIONS at once with
# PARSE_OPTIONS_CHECK_ONLY=1 in its environment, which makes this parser exit right after
# parsing (0 when every option is its own, 1 with its usual message otherwise). --help lists
# the recipe's options, then names the script whose --help lists the rest.

_po_help() {
  echo "Usage: $0 [options] [args]"
  echo "Options (default in brackets):"
  for _po_var in ${_po_vars}; do
    printf '  --%-24s [%s]\n' "${_po_var//_/-}" "${!_po_var}"
  done
  if [ -n "${PASS_UNKNOWN_OPTIONS:-}" ]; then
    echo "Any other option goes to ${PASS_UNKNOWN_OPTIONS} (bash ${PASS_UNKNOWN_OPTIONS} --help lists them)."
  fi
}

# Variables declared so far by the sourcing script (lower-case names only).
_po_vars=$(compgen -v | grep -E '^[a-z][a-z0-9_]*$' | grep -v '^_po' || true)

_po_positional=()
PASSED_OPTIONS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) _po_help; exit 0 ;;
    --*=*) _po_name="${1%%=*}"; _po_value="${1#*=}"; _po_given=("$1"); shift ;;
    --*)
      _po_name="$1"
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _po_value="$2"; _po_given=("$1" "$2"); shift 2 ;;
    *) _po_positional+=("$1"); shift; continue ;;
  esac
  _po_var="${_po_name#--}"; _po_var="${_po_var//-/_}"
  # no pipe into grep -q here: under pipefail, printf's SIGPIPE once grep has matched would
  # fail the test now and then ("unknown option --stage" for a declared option)
  if [[ " $(echo ${_po_vars}) " != *" ${_po_var} "* ]]; then
    if [ -n "${PASS_UNKNOWN_OPTIONS:-}" ]; then PASSED_OPTIONS+=("${_po_given[@]}"); continue; fi
    echo "$0: unknown option ${_po_name} (see --help)" >&2
    exit 1
  fi
  printf -v "${_po_var}" '%s' "${_po_value}"
done
set -- "${_po_positional[@]+"${_po_positional[@]}"}"
unset _po_name _po_value _po_var _po_positional _po_given
if [ -n "${PARSE_OPTIONS_CHECK_ONLY:-}" ]; then exit 0; fi
if [ -n "${PASS_UNKNOWN_OPTIONS:-}" ] && [ ${#PASSED_OPTIONS[@]} -gt 0 ]; then
  # the other script rejects what it does not know, now rather than after the recipe's own stages
  PARSE_OPTIONS_CHECK_ONLY=1 bash "${PASS_UNKNOWN_OPTIONS}" "${PASSED_OPTIONS[@]}" || exit 1
fi
