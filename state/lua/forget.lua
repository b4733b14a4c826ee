-- Resources dropped by metrics_expiration leave the tenant's last-seen hash: each named one is
-- removed only if it is still last seen before the cut-off (a merge may have raised it since).
-- Safe from any worker, twice or late: a series whose resource is missing there counts as last
-- seen when the series itself was, which is no later than the removed time (state/fold.py).
--
-- KEYS[1] = the tenant's last-seen hash
-- ARGV[1] = the cut-off (µs, a string), ARGV[2..] = resource ids
-- Returns how many were removed.

local cutoff = tonumber(ARGV[1])
local removed = 0
for index = 2, #ARGV do
  local seen = redis.call('HGET', KEYS[1], ARGV[index])
  if seen and tonumber(seen) < cutoff then
    redis.call('HDEL', KEYS[1], ARGV[index])
    removed = removed + 1
  end
end
return removed
