-- breaker_command. REQ: {key, action}. Returns the transitions (flat).
local out = {}
br_command(breaker(REQ.key), REQ.action, out)
flush()
return out
