-- budget_reserve: add to entry_id's reservations (a retry, a fallback, a tool step), every
-- hold or none. REQ: {entry_id, ttl_s, holds: [{key, limit, amount, ttl_s}]}.
-- Returns {reserved, remaining (flat key, micro-USD pairs)}.
if not bg_check(REQ.holds, REQ.entry_id) then
  return { '0', bg_left(REQ.holds, REQ.entry_id) }
end
return { '1', bg_take(REQ.holds, REQ.entry_id, REQ.ttl_s) }
