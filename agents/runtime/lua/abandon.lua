-- abandon: executions whose callers will never settle them (a dead process; an admission whose
-- reply never came back). REQ: {lease_ids, deployment_ids, budget_keys, rate_keys, charge,
-- tombstone_ttl_s}. Each lease id is marked gone (an admission under it that arrives later takes
-- nothing; not with tombstone_ttl_s 0: the id is to run again), its leases and rate-log entries are dropped, and its reservations become spend
-- (charge) or are dropped. Returns flat lease id, micro-USD held pairs (the largest over its
-- windows; absent when it held nothing any more).
local held = {}
for _, lease_id in ipairs(REQ.lease_ids) do
  if REQ.tombstone_ttl_s > 0 then
    redis.call('SET', gone_key(lease_id), '1', 'PX', ttl_ms(REQ.tombstone_ttl_s))
  end
  for _, deployment_id in ipairs(REQ.deployment_ids) do
    lease_drop(deployment_id, lease_id)
  end
  for _, key in ipairs(REQ.rate_keys) do
    rl_remove(key, lease_id)
  end
  local most = nil
  for _, key in ipairs(REQ.budget_keys) do
    local w = bg_state(key, nil)
    local field = 'r:' .. lease_id
    local amount = tonumber(redis.call('HGET', w.h, field))
    if amount ~= nil then
      redis.call('HDEL', w.h, field)
      redis.call('ZREM', w.x, lease_id)
      w.reserved = w.reserved - amount
      if REQ.charge then
        w.spent = w.spent + amount
      end
      redis.call('HSET', w.h, 'spent', int(w.spent), 'reserved', int(w.reserved))
      if most == nil or amount > most then
        most = amount
      end
    end
  end
  if most ~= nil then
    held[#held + 1] = lease_id
    held[#held + 1] = int(most)
  end
end
return held
