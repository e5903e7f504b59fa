#!/usr/bin/env bash
# protocol/ and common/ are sans-I/O: no Asio, no Beast; protocol/ never reaches into auth/ or proxy/.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
if grep -rnE '#include <boost/(asio|beast)' protocol common; then
  echo "layering: protocol/ and common/ must not include Asio or Beast"; bad=1
fi
if grep -rnE '#include "(auth|proxy|config|net)/' protocol; then
  echo "layering: protocol/ must not include auth/, proxy/, config/ or net/"; bad=1
fi
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
