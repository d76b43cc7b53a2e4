-- Shared library of the RedisState scripts (agents/runtime/redis_state.py). Each script is this
-- file followed by one entry point (agents/runtime/lua/<name>.lua), run by EVALSHA as one atomic
-- unit. The logic mirrors agents/runtime/memory.py line for line; keep the two in step.
--
-- ARGV[1] key prefix, ARGV[2] now (epoch seconds as a string, or "" to read Redis TIME),
-- ARGV[3] extra TTL seconds (slack for an injected clock), ARGV[4] the call as JSON.
--
-- Keys (P = prefix .. ":"):
--   P.."br:"..key        hash   breaker: mode state consecutive failures slow open_until
--                               probes_issued probes_ok probe_deadline (no TTL: it is state)
--   P.."br:"..key..":w"  list   the outcome window, oldest first: 0 ok, 1 failed, +2 slow
--   P.."rl:"..key        zset   rate-log entries: member "<seq>:<entry_id>", score = admitted at
--   P.."rl:"..key..":h"  hash   total, seq, "c:"..member -> cost, "e:"..entry_id -> member
--   P.."lease:"..id      zset   in-flight leases of a deployment: member lease_id, score expiry
--   P.."bg:"..key        hash   budget window (key = "budget:<id>:<window>"): spent, reserved (the
--                               sum of the live "r:" fields), "r:"..entry_id -> amount reserved
--   P.."bg:"..key..":x"  zset   its reservations: member entry_id, score expiry
--
-- Money is integer micro-USD: Lua numbers are doubles, exact for integers below 2^53 (9e15, i.e.
-- $9e9; limits stay below $1e8), printed by int() as plain integers, which HINCRBY takes.
--
-- Numbers cross the Lua/Redis boundary as strings formatted with %.17g: Lua's own tostring keeps
-- only 14 significant digits (epoch seconds with a fraction need 16), and Redis truncates Lua
-- numbers in replies to integers.

local P = ARGV[1] .. ':'
local NOW
if ARGV[2] == '' then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  NOW = tonumber(ARGV[2])
end
local SLACK = tonumber(ARGV[3])
local REQ = cjson.decode(ARGV[4])

local FAIL = 1
local SLOW = 2
local OUTCOME_FAILURE = 1
local OUTCOME_IGNORED = 2
local INF = math.huge
local CHUNK = 500

local function num(x)
  return string.format('%.17g', x)
end

local function ttl_ms(seconds)
  return math.max(1, math.ceil((seconds + SLACK) * 1000))
end

-- Transitions are appended to a flat list: key, from, to, at, reason.
local function transition(out, key, from, to, reason)
  out[#out + 1] = key
  out[#out + 1] = from
  out[#out + 1] = to
  out[#out + 1] = num(NOW)
  out[#out + 1] = reason
end

-- ---------------------------------------------------------------------------------------------
-- Breakers
-- ---------------------------------------------------------------------------------------------

local BREAKERS = {}

local function breaker(key)
  local b = BREAKERS[key]
  if b then
    return b
  end
  local hk = P .. 'br:' .. key
  b = {
    key = key, hk = hk, wk = hk .. ':w', dirty = false,
    mode = 'auto', state = 'closed', consecutive = 0, failures = 0, slow = 0, open_until = 0,
    probes_issued = 0, probes_ok = 0, probe_deadline = 0,
  }
  local raw = redis.call('HGETALL', hk)
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    if field == 'mode' or field == 'state' then
      b[field] = value
    else
      b[field] = tonumber(value)
    end
  end
  b.wlen = redis.call('LLEN', b.wk)
  BREAKERS[key] = b
  return b
end

local function flush()
  for _, b in pairs(BREAKERS) do
    if b.dirty then
      redis.call('HSET', b.hk,
        'mode', b.mode, 'state', b.state, 'consecutive', num(b.consecutive),
        'failures', num(b.failures), 'slow', num(b.slow), 'open_until', num(b.open_until),
        'probes_issued', num(b.probes_issued), 'probes_ok', num(b.probes_ok),
        'probe_deadline', num(b.probe_deadline))
      b.dirty = false
    end
  end
end

local MODE_STATE = { forced_open = 'forced_open', forced_closed = 'forced_closed', disabled = 'disabled' }

local function effective(b)
  return MODE_STATE[b.mode] or b.state
end

local function clear_counts(b)
  b.consecutive = 0
  redis.call('DEL', b.wk)
  b.wlen = 0
  b.failures = 0
  b.slow = 0
  b.probes_issued = 0
  b.probes_ok = 0
  b.dirty = true
end

local function br_open(b, cfg, reason, out)
  local before = b.state
  b.state = 'open'
  b.open_until = NOW + cfg.recovery_timeout_s
  clear_counts(b)
  transition(out, b.key, before, 'open', reason)
end

local function br_half_open(b, cfg, out)
  b.state = 'half_open'
  b.probes_issued = 0
  b.probes_ok = 0
  b.probe_deadline = NOW + cfg.probe_timeout_s
  b.dirty = true
  transition(out, b.key, 'open', 'half_open', 'recovery timeout')
end

local function br_close(b, reason, out)
  local before = b.state
  b.state = 'closed'
  b.open_until = 0
  clear_counts(b)
  transition(out, b.key, before, 'closed', reason)
end

-- Would acquire admit? No mutation. Returns allowed, retry_after.
local function br_peek(b, cfg)
  if b.mode == 'forced_open' then
    return false, cfg.recovery_timeout_s
  end
  if b.mode == 'forced_closed' or b.mode == 'disabled' then
    return true, 0
  end
  if b.state == 'open' then
    if NOW < b.open_until then
      return false, b.open_until - NOW
    end
    return true, 0 -- would move to half-open and take the first probe
  end
  if b.state == 'half_open' then
    if b.probes_issued < cfg.half_open_max_calls then
      return true, 0
    end
    if NOW >= b.probe_deadline then
      return false, cfg.recovery_timeout_s
    end
    return false, math.max(0, b.probe_deadline - NOW)
  end
  return true, 0
end

-- Returns allowed, probe, retry_after; appends transitions to out.
local function br_acquire(b, cfg, out)
  if b.mode == 'forced_open' then
    return false, false, cfg.recovery_timeout_s
  end
  if b.mode == 'forced_closed' or b.mode == 'disabled' then
    return true, false, 0
  end
  if b.state == 'open' then
    if NOW < b.open_until then
      return false, false, b.open_until - NOW
    end
    br_half_open(b, cfg, out)
  end
  if b.state == 'half_open' then
    if b.probes_issued < cfg.half_open_max_calls then
      b.probes_issued = b.probes_issued + 1
      b.dirty = true
      return true, true, 0
    end
    if NOW >= b.probe_deadline then
      br_open(b, cfg, 'half-open probes timed out', out)
      return false, false, cfg.recovery_timeout_s
    end
    return false, false, math.max(0, b.probe_deadline - NOW)
  end
  return true, false, 0
end

local function br_record(b, cfg, outcome, duration_s, probe, out)
  if b.mode == 'disabled' or b.mode == 'forced_open' then
    return
  end
  if probe and b.mode == 'auto' and b.state == 'half_open' then
    if outcome == OUTCOME_FAILURE then
      br_open(b, cfg, 'half-open probe failed', out)
      return
    end
    if outcome == OUTCOME_IGNORED then
      b.probes_issued = math.max(0, b.probes_issued - 1) -- the slot is free again
      b.dirty = true
      return
    end
    b.probes_ok = b.probes_ok + 1
    b.dirty = true
    if b.probes_ok >= cfg.half_open_max_calls then
      br_close(b, 'half-open probes succeeded', out)
    end
    return
  end
  local state = effective(b)
  if state ~= 'closed' and state ~= 'forced_closed' then
    return -- a late answer from before the breaker opened changes nothing
  end
  if outcome == OUTCOME_IGNORED then
    return
  end
  local failed = outcome == OUTCOME_FAILURE
  local slow = cfg.slow_call_s ~= nil and duration_s > cfg.slow_call_s
  local code = (failed and FAIL or 0) + (slow and SLOW or 0)
  if failed then
    b.consecutive = b.consecutive + 1
  else
    b.consecutive = 0
  end
  redis.call('RPUSH', b.wk, code)
  b.wlen = b.wlen + 1
  if failed then
    b.failures = b.failures + 1
  end
  if slow then
    b.slow = b.slow + 1
  end
  if b.wlen > cfg.window_size then
    local old = tonumber(redis.call('LPOP', b.wk))
    b.wlen = b.wlen - 1
    b.failures = b.failures - (old % 2)
    b.slow = b.slow - math.floor(old / 2)
  end
  b.dirty = true
  if b.mode ~= 'auto' then
    return
  end
  if b.consecutive >= cfg.failure_threshold then
    br_open(b, cfg, string.format('%d consecutive failures', b.consecutive), out)
    return
  end
  local calls = b.wlen
  if calls >= cfg.minimum_calls then
    if b.failures / calls >= cfg.failure_rate_threshold then
      br_open(b, cfg, string.format('failure rate %d/%d', b.failures, calls), out)
      return
    end
    if cfg.slow_call_s ~= nil and b.slow / calls >= cfg.slow_call_rate_threshold then
      br_open(b, cfg, string.format('slow-call rate %d/%d', b.slow, calls), out)
      return
    end
  end
end

local ACTION_MODE = { force_open = 'forced_open', force_close = 'forced_closed', disable = 'disabled' }

local function br_command(b, action, out)
  local before = effective(b)
  if action == 'reset' then
    b.mode = 'auto'
    b.state = 'closed'
    b.open_until = 0
    clear_counts(b)
  else
    b.mode = ACTION_MODE[action]
  end
  b.dirty = true
  local after = effective(b)
  if before ~= after then
    transition(out, b.key, before, after, 'operator ' .. action)
  end
end

-- ---------------------------------------------------------------------------------------------
-- Rate limits: exact sliding logs
-- ---------------------------------------------------------------------------------------------

local function rl_keys(key)
  local z = P .. 'rl:' .. key
  return z, z .. ':h'
end

local function rl_total(h)
  return tonumber(redis.call('HGET', h, 'total')) or 0
end

-- Costs of members, in order (HMGET in chunks: Lua's unpack has a stack limit).
local function rl_costs(h, members)
  local costs = {}
  for first = 1, #members, CHUNK do
    local fields = {}
    for i = first, math.min(#members, first + CHUNK - 1) do
      fields[#fields + 1] = 'c:' .. members[i]
    end
    local got = redis.call('HMGET', h, unpack(fields))
    for i = 1, #got do
      costs[#costs + 1] = tonumber(got[i]) or 0
    end
  end
  return costs
end

-- Drop entries admitted at or before now - window_s (an entry lives for exactly window_s).
local function rl_prune(key, window_s)
  local z, h = rl_keys(key)
  local cutoff = num(NOW - window_s)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #old == 0 then
    return
  end
  local costs = rl_costs(h, old)
  local freed = 0
  for i = 1, #costs do
    freed = freed + costs[i]
  end
  redis.call('HSET', h, 'total', num(rl_total(h) - freed))
  for first = 1, #old, CHUNK do
    local fields = {}
    for i = first, math.min(#old, first + CHUNK - 1) do
      local member = old[i]
      fields[#fields + 1] = 'c:' .. member
      local entry_field = 'e:' .. string.sub(member, string.find(member, ':', 1, true) + 1)
      if redis.call('HGET', h, entry_field) == member then
        fields[#fields + 1] = entry_field
      end
    end
    redis.call('HDEL', h, unpack(fields))
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
end

-- How long until `cost` fits: walk the log oldest first until enough has expired.
local function rl_retry_after(key, window_s, limit, cost, total)
  if cost > limit then
    return INF
  end
  local z, h = rl_keys(key)
  local freed = 0
  local start = 0
  while true do
    local page = redis.call('ZRANGE', z, start, start + CHUNK - 1, 'WITHSCORES')
    if #page == 0 then
      break
    end
    local members = {}
    for i = 1, #page, 2 do
      members[#members + 1] = page[i]
    end
    local costs = rl_costs(h, members)
    for i = 1, #members do
      freed = freed + costs[i]
      if total - freed + cost <= limit then
        return math.max(0, tonumber(page[2 * i]) + window_s - NOW)
      end
    end
    start = start + CHUNK
  end
  return window_s
end

-- 0 when every limit admits its cost, else the longest wait.
local function rl_check(limits)
  local wait = 0
  for _, l in ipairs(limits) do
    rl_prune(l.key, l.window_s)
    local total = rl_total(select(2, rl_keys(l.key)))
    if total + l.cost > l.limit then
      wait = math.max(wait, rl_retry_after(l.key, l.window_s, l.limit, l.cost, total))
    end
  end
  return wait
end

local function rl_take(limits, entry_id)
  for _, l in ipairs(limits) do
    local z, h = rl_keys(l.key)
    local seq = redis.call('HINCRBY', h, 'seq', 1)
    local member = string.format('%d', seq) .. ':' .. entry_id
    redis.call('ZADD', z, num(NOW), member)
    redis.call('HSET', h, 'c:' .. member, num(l.cost), 'total', num(rl_total(h) + l.cost))
    redis.call('HSETNX', h, 'e:' .. entry_id, member)
    local ms = ttl_ms(l.window_s)
    redis.call('PEXPIRE', z, ms)
    redis.call('PEXPIRE', h, ms)
  end
end

-- Replace the cost reserved under entry_id with the real one.
local function rl_settle(key, window_s, entry_id, cost)
  rl_prune(key, window_s)
  local _, h = rl_keys(key)
  local member = redis.call('HGET', h, 'e:' .. entry_id)
  if not member then
    return
  end
  local old = tonumber(redis.call('HGET', h, 'c:' .. member))
  if old == nil then
    return
  end
  redis.call('HSET', h, 'c:' .. member, num(cost), 'total', num(rl_total(h) + cost - old))
end

-- ---------------------------------------------------------------------------------------------
-- In-flight leases and deployment choice
-- ---------------------------------------------------------------------------------------------

local function lease_key(deployment_id)
  return P .. 'lease:' .. string.format('%d', deployment_id)
end

local function load(deployment_id)
  local k = lease_key(deployment_id)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', num(NOW))
  return redis.call('ZCARD', k)
end

local function lease_take(deployment_id, lease_id, lease_ttl_s)
  local k = lease_key(deployment_id)
  redis.call('ZADD', k, num(NOW + lease_ttl_s), lease_id)
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', k, ttl_ms(tonumber(last[2]) - NOW))
end

local function lease_drop(deployment_id, lease_id)
  redis.call('ZREM', lease_key(deployment_id), lease_id)
end

-- By least weighted load. Returns deployment_id (or nil), probe, retry_after, any_had_capacity.
-- With commit, the chosen deployment's breaker is acquired and its lease taken; refused
-- candidates go through acquire too (time-driven transitions) and report open-until times.
local function select_deployment(lease_id, lease_ttl_s, candidates, cfg, out, open_until, commit)
  local ranked = {}
  for _, c in ipairs(candidates) do
    local current = load(c.id)
    ranked[#ranked + 1] = { c = c, load = current, ratio = current / c.weight }
  end
  table.sort(ranked, function(a, b)
    if a.ratio ~= b.ratio then
      return a.ratio < b.ratio
    end
    if a.c.weight ~= b.c.weight then
      return a.c.weight > b.c.weight
    end
    return a.c.id < b.c.id
  end)
  local wait = INF
  local had_capacity = false
  for _, r in ipairs(ranked) do
    local c = r.c
    if r.load < c.max_concurrency then
      had_capacity = true
      local b = breaker(c.key)
      if not commit then
        local allowed, retry = br_peek(b, cfg)
        if allowed then
          return c.id, false, 0, true
        end
        wait = math.min(wait, retry)
      else
        local allowed, probe, retry = br_acquire(b, cfg, out)
        if allowed then
          lease_take(c.id, lease_id, lease_ttl_s)
          return c.id, probe, 0, true
        end
        wait = math.min(wait, retry)
        if b.state == 'open' then
          open_until[#open_until + 1] = c.key
          open_until[#open_until + 1] = num(b.open_until)
        end
      end
    end
  end
  if wait == INF then
    wait = 0
  end
  return nil, false, wait, had_capacity
end

local function flag(value)
  return value and '1' or '0'
end

local function id_or_empty(value)
  if value == nil then
    return ''
  end
  return string.format('%d', value)
end

-- ---------------------------------------------------------------------------------------------
-- Budgets: settled spend plus reservations that expire with their execution's lease
-- ---------------------------------------------------------------------------------------------

-- An integer amount as HINCRBY takes it: %.17g would print a negated zero as "-0".
local function int(x)
  if x == 0 then
    return '0'
  end
  return num(x)
end

local function bg_keys(key)
  local h = P .. 'bg:' .. key
  return h, h .. ':x'
end

-- Drop the reservations whose expiry is at or before now (a dead process's). Returns spent,
-- reserved of what is left.
local function bg_prune(key)
  local h, x = bg_keys(key)
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', num(NOW))
  if #old > 0 then
    local freed = 0
    for first = 1, #old, CHUNK do
      local fields = {}
      for i = first, math.min(#old, first + CHUNK - 1) do
        fields[#fields + 1] = 'r:' .. old[i]
      end
      local got = redis.call('HMGET', h, unpack(fields))
      for i = 1, #got do
        freed = freed + (tonumber(got[i]) or 0)
      end
      redis.call('HDEL', h, unpack(fields))
    end
    redis.call('ZREMRANGEBYSCORE', x, '-inf', num(NOW))
    if freed ~= 0 then
      redis.call('HINCRBY', h, 'reserved', int(-freed))
    end
  end
  local got = redis.call('HMGET', h, 'spent', 'reserved')
  return tonumber(got[1]) or 0, tonumber(got[2]) or 0
end

-- Every hold fits: spent + live reservations + amount <= limit. Takes nothing.
local function bg_check(holds)
  local ok = true
  for _, hold in ipairs(holds) do
    local spent, reserved = bg_prune(hold.key)
    if spent + reserved + hold.amount > hold.limit then
      ok = false
    end
  end
  return ok
end

-- Flat key, remaining (limit - spent - reserved) pairs, in the order of the holds.
local function bg_left(holds)
  local left = {}
  for _, hold in ipairs(holds) do
    local spent, reserved = bg_prune(hold.key)
    left[#left + 1] = hold.key
    left[#left + 1] = int(hold.limit - spent - reserved)
  end
  return left
end

-- Add each hold's amount to entry_id's reservation (a top-up adds up), which now expires at
-- now + ttl_s; the window's keys live hold.ttl_s from this write. Returns bg_left's pairs.
-- Call after bg_check, which pruned what had expired.
local function bg_take(holds, entry_id, ttl_s)
  local left = {}
  for _, hold in ipairs(holds) do
    local h, x = bg_keys(hold.key)
    redis.call('HINCRBY', h, 'r:' .. entry_id, int(hold.amount))
    redis.call('HINCRBY', h, 'reserved', int(hold.amount))
    redis.call('ZADD', x, num(NOW + ttl_s), entry_id)
    local ms = ttl_ms(hold.ttl_s)
    redis.call('PEXPIRE', h, ms)
    redis.call('PEXPIRE', x, ms)
    local got = redis.call('HMGET', h, 'spent', 'reserved')
    left[#left + 1] = hold.key
    left[#left + 1] = int(hold.limit - (tonumber(got[1]) or 0) - (tonumber(got[2]) or 0))
  end
  return left
end

-- entry_id's reservation (if any is left) becomes spend: it is dropped and `actual` is added
-- to spent. A window whose keys had expired (or never existed) is recreated with
-- fallback_ttl_s to live, since a settlement does not carry the window's own TTL.
local function bg_settle(key, entry_id, actual, fallback_ttl_s)
  bg_prune(key)
  local h, x = bg_keys(key)
  local field = 'r:' .. entry_id
  local amount = tonumber(redis.call('HGET', h, field))
  if amount ~= nil then
    redis.call('HDEL', h, field)
    redis.call('HINCRBY', h, 'reserved', int(-amount))
    redis.call('ZREM', x, entry_id)
  end
  redis.call('HINCRBY', h, 'spent', int(math.max(0, actual)))
  if redis.call('PTTL', h) < 0 then
    redis.call('PEXPIRE', h, ttl_ms(fallback_ttl_s))
  end
end
