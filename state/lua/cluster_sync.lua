-- Cluster layout: bring an index's hash tag (input partition i = emission slot i) in line with
-- the control tag: its copy of the owner's fencing token only grows (a claim raises it; merges
-- and folds are fenced by it), and its copy of the generation marker names the state its records
-- belong to. A marker that differs (the control tag lost its data and a new generation began)
-- means the slot's series restart: its records are dropped with its cursors (the fold then pulls
-- what the outboxes still hold: deltas stored with offsets that are still there).
-- A missing marker (the tag's own data was lost, or is new) is simply set.
--
-- KEYS[1] = token copy, KEYS[2] = marker copy, KEYS[3] = tenants with keys here,
-- KEYS[4..] = the slot keys of those tenants (records, version, cursors, count, parts)
-- ARGV[1] = token ('' = leave it), ARGV[2] = marker ('' = leave it)
-- Returns 'SET', 'RESET' (records dropped) or 'SAME'.

local result = 'SAME'
if ARGV[2] ~= '' then
  local marker = redis.call('GET', KEYS[2])
  if marker ~= ARGV[2] then
    if marker then
      for index = 3, #KEYS do
        redis.call('DEL', KEYS[index])
      end
      redis.call('DEL', KEYS[1])
      result = 'RESET'
    else
      result = 'SET'
    end
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
if ARGV[1] ~= '' then
  local current = redis.call('GET', KEYS[1])
  if current == false or tonumber(current) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[1])
  end
end
return result
