"""Track 2: whole conversations diarized, transcribed and scored by tcpWER."""
