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

_po_help() {
  echo "Usage: $0 [options] [args]"
  echo "Options (default in brackets):"
  for _po_var in ${_po_vars}; do
    printf '  --%-24s [%s]\n' "${_po_var//_/-}" "${!_po_var}"
  done
}

# Variables declared so far by the sourcing script (lower-case names only).
_po_vars=$(compgen -v | grep -E '^[a-z][a-z0-9_]*$' | grep -v '^_po' || true)

_po_positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) _po_help; exit 0 ;;
    --*=*) _po_name="${1%%=*}"; _po_value="${1#*=}"; shift ;;
    --*)
      _po_name="$1"
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _po_value="$2"; shift 2 ;;
    *) _po_positional+=("$1"); shift; continue ;;
  esac
  _po_var="${_po_name#--}"; _po_var="${_po_var//-/_}"
  # no pipe into grep -q here: under pipefail, printf's SIGPIPE once grep has matched would
  # fail the test now and then ("unknown option --stage" for a declared option)
  if [[ " $(echo ${_po_vars}) " != *" ${_po_var} "* ]]; then
    echo "$0: unknown option ${_po_name} (see --help)" >&2
    exit 1
  fi
  printf -v "${_po_var}" '%s' "${_po_value}"
done
set -- "${_po_positional[@]+"${_po_positional[@]}"}"
unset _po_name _po_value _po_var _po_positional
