-- release: give back a lease without an outcome; a probe's slot is freed (as IGNORED).
-- REQ: {lease_id, deployment_id, key, probe, cfg}. Returns nothing useful.
lease_drop(REQ.deployment_id, REQ.lease_id)
if REQ.probe then
  br_record(breaker(REQ.key), REQ.cfg, OUTCOME_IGNORED, 0, true, {})
end
flush()
return 1
