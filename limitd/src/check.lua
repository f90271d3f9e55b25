-- Fixed-window check of a batch of hits, all or nothing.
--
-- KEYS[i]     the counter of hit i: a hash {w = start of the window its count belongs to, in ms
--             since the epoch of Redis time; c = units consumed in that window}.
-- ARGV[3i-2]  limit of hit i      (integer, 1 <= limit <= 1e15, checked by limitd)
-- ARGV[3i-1]  window_ms of hit i  (integer, 1 <= window_ms <= 366 days)
-- ARGV[3i]    cost of hit i       (integer, 0 <= cost <= 1e15)
-- Hits repeating a key share one counter (limitd guarantees they share the window length too):
-- their costs add up.
--
-- Returns integers only (a Lua float in a reply is truncated):
--   { all_allowed (1|0), then per hit: allowed (1|0), remaining, reset_ms, retry_after_ms }
-- remaining is what is left after this check: after the increment if the check was allowed, and
-- the unconsumed rest if it was denied. reset_ms is the time until the hit's window ends.
-- retry_after_ms is 0 for an allowed hit; for a denied one the time until its window ends, or
-- the whole window length if cost > limit (such a hit can never pass: the value only paces
-- retries).
--
-- Why a script: the decision reads every counter before any is written, and writes only if all
-- hits pass. A script runs atomically, so no other check slips in between read and write (the
-- limit holds under any concurrency), keys cannot expire halfway through (they can between the
-- commands of a read-then-MULTI sequence), and the time comes from the one Redis clock (TIME),
-- never from limitd's. Scripts are replicated by their effects, so TIME before writes is allowed.
--
-- Why a hash holding its window start rather than one key per window: the key a check touches is
-- then fixed by the request alone and can be passed in KEYS as Redis requires (a per-window name
-- would be computed here from TIME). A stored w other than the current window start means the
-- count belongs to a past window: it is read as 0. PEXPIREAT at the window end deletes idle keys.

-- Redis turns Lua numbers given to redis.call into text; %d keeps large integers exact and
-- never uses an exponent.
local function int(x)
  return string.format('%d', x)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local n = #KEYS
local limits, windows, costs, starts, allowed = {}, {}, {}, {}, {}
local stored = {}  -- key -> units already consumed in its current window
local charged = {} -- key -> units consumed if this check is allowed
local all = 1

for i = 1, n do
  local key = KEYS[i]
  local limit = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local start = now - (now % window)
  limits[i], windows[i], costs[i], starts[i] = limit, window, cost, start
  if stored[key] == nil then
    local v = redis.call('HMGET', key, 'w', 'c')
    if tonumber(v[1]) == start then
      stored[key] = tonumber(v[2]) or 0
    else
      stored[key] = 0
    end
    charged[key] = stored[key]
  end
  charged[key] = charged[key] + cost
  if charged[key] <= limit then
    allowed[i] = 1
  else
    allowed[i] = 0
    all = 0
  end
end

local reply = { all }
for i = 1, n do
  local key = KEYS[i]
  local used = stored[key]
  if all == 1 then
    used = charged[key]
  end
  -- A limit lowered since the count was taken can leave used above it.
  local remaining = math.max(0, limits[i] - used)
  local reset = starts[i] + windows[i] - now
  local retry = 0
  if allowed[i] == 0 then
    if costs[i] > limits[i] then
      retry = windows[i]
    else
      retry = reset
    end
  end
  reply[#reply + 1] = allowed[i]
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
end

if all == 1 then
  for i = 1, n do
    local key = KEYS[i]
    -- Write each changed counter once; a batch of cost-0 hits writes nothing.
    if charged[key] ~= stored[key] then
      redis.call('HSET', key, 'w', int(starts[i]), 'c', int(charged[key]))
      redis.call('PEXPIREAT', key, int(starts[i] + windows[i]))
      stored[key] = charged[key]
    end
  end
end

return reply
