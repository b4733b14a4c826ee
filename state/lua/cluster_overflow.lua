-- Cluster layout: deliver a slot's pending overflow (rows of new series its fold refused, kept
-- in the slot by cluster_fold.lua) to the target slots' outboxes in the control tag, once per
-- fold version of the source slot: a repeated or late delivery changes nothing.
--
-- KEYS[1] = the source slot's delivered version (control tag), KEYS[2..] = target outboxes
-- ARGV[1] = the fold version, ARGV[2..] = the rows for KEYS[2..]
-- Returns 1 when delivered now, 0 when it already was.

local delivered = tonumber(redis.call('GET', KEYS[1]) or '0')
if delivered >= tonumber(ARGV[1]) then
  return 0
end
for index = 2, #KEYS do
  redis.call('RPUSH', KEYS[index], ARGV[index])
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
