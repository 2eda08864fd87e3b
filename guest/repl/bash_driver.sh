# In-guest bash REPL driver: runs cells from the host in one persistent shell, so variables,
# functions and the working directory carry over (see src/sandbox/repl-frames.ts).
#
# Shipped behind a prelude that defines FRAME_READY, FRAME_END and MAX_TEXT_CHARS (the host's
# constants; driverSource in src/sandbox/repl.ts). Needs bash and GNU coreutils' head and od
# (head -c reads no more than it is asked for, so the rest of the channel stays unread).
#
# Cells come in and control frames go out on the channel (fd MSB_CHANNEL_FD). A cell runs with
# eval in this shell, the channel closed for it (children do not inherit it), and its status is
# the status of its last command: non-zero ends the cell as an error named ExitCode. Limits: a
# cell's `exit` ends the shell (the host then says its state is lost), and so does a failure
# under a cell's `set -e`; the driver's own names start with __msb_.

__msb_ch=$MSB_CHANNEL_FD
unset MSB_CHANNEL_FD
shopt -s expand_aliases

# A frame: type, then the JSON's length (our JSON is ASCII and short), then the JSON.
__msb_send() {
  local n=${#2}
  printf "\\x$(printf %02x "$1")\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))%s" "$2" >&"$__msb_ch"
}

__msb_send "$FRAME_READY" "{\"language\":\"bash\",\"version\":\"${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}.${BASH_VERSINFO[2]}\"}"

while :; do
  __msb_len=$(head -c 4 <&"$__msb_ch" | od -An -tu1)
  read -r __msb_b0 __msb_b1 __msb_b2 __msb_b3 <<<"$__msb_len"
  [ -n "$__msb_b3" ] || exit 0 # the host closed the channel
  __msb_len=$(((__msb_b0 << 24) | (__msb_b1 << 16) | (__msb_b2 << 8) | __msb_b3))
  # The x keeps the cell's trailing newlines from command substitution.
  __msb_cell=$(head -c "$__msb_len" <&"$__msb_ch"; printf x)
  __msb_cell=${__msb_cell%x}
  eval "$__msb_cell" {__msb_ch}>&-
  __msb_status=$?
  if [ "$__msb_status" -eq 0 ]; then
    __msb_send "$FRAME_END" '{"status":"ok"}'
  else
    __msb_send "$FRAME_END" "{\"status\":\"error\",\"ename\":\"ExitCode\",\"evalue\":\"exit status $__msb_status\"}"
  fi
done
