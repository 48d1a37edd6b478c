#!/usr/bin/env bash
# preparation/prepare_lrs3.sh: the documented path of the LRS3 driver, which lives in
# preparation/lrs3/prepare_lrs3.sh (same options; see its --help).
exec "$(dirname "${BASH_SOURCE[0]}")/lrs3/prepare_lrs3.sh" "$@"
