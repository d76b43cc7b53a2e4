-- breaker_acquire. REQ: {key, cfg}. Returns {allowed, probe, retry_after, transitions}.
local out = {}
local allowed, probe, retry = br_acquire(breaker(REQ.key), REQ.cfg, out)
flush()
return { flag(allowed), flag(probe), num(retry), out }
