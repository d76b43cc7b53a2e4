-- breaker_record. REQ: {key, cfg, outcome, duration_s, probe}. Returns the transitions (flat).
local out = {}
br_record(breaker(REQ.key), REQ.cfg, REQ.outcome, REQ.duration_s, REQ.probe, out)
flush()
return out
