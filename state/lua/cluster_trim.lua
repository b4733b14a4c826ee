-- Cluster layout: drop the outbox entries a slot has folded (its committed cursor, an absolute
-- entry count within the source tag's epoch). The base counts the entries trimmed so far, so a
-- repeated or late trim with an older cursor changes nothing, nor does one from another epoch.
--
-- KEYS[1] = the slot's outbox (list), KEYS[2] = its base, KEYS[3] = the source tag's epoch
-- ARGV[1] = the cursor's count, ARGV[2] = the cursor's epoch
-- Returns how many entries were dropped.

if (redis.call('GET', KEYS[3]) or '') ~= ARGV[2] then
  return 0
end
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor = tonumber(ARGV[1])
local available = redis.call('LLEN', KEYS[1])
if cursor > base + available then
  cursor = base + available
end
if cursor <= base then
  return 0
end
redis.call('LTRIM', KEYS[1], cursor - base, -1)
redis.call('SET', KEYS[2], cursor)
return cursor - base
