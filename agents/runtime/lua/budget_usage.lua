-- budget_usage. REQ: {keys: [...]}. Returns {spent, reserved} per key, in order, in micro-USD
-- (expired reservations are pruned first, so they are not counted).
local usage = {}
for i, key in ipairs(REQ.keys) do
  local spent, reserved = bg_prune(key)
  usage[i] = { int(spent), int(reserved) }
end
return usage
