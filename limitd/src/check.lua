-- Rate-limit check of a batch of hits, all or nothing: fixed window, sliding window and GCRA;
-- and the give-back of a check whose answer limitd could not deliver.
--
-- KEYS[1]      the check's receipt (see "Receipts" below)
-- KEYS[i+1]    the state of hit i (layouts below). Hits repeating a key share one state; limitd
--              guarantees they share algorithm, window_ms and burst (and, for gcra, limit).
-- ARGV[1]      mode: 0 check, 1 give back
-- ARGV[2]      the receipt's lifetime in ms
-- ARGV[9i-6]   algorithm of hit i: 0 fixed_window, 1 sliding_window, 2 gcra
-- ARGV[9i-5]   shadow: 1 for a shadow hit, else 0
-- ARGV[9i-4]   limit       (integer, 1 <= limit <= 1e15, checked by limitd)
-- ARGV[9i-3]   window_ms   (integer, 1 <= window_ms <= 366 days < 2^35)
-- ARGV[9i-2]   cost        (integer, 0 <= cost <= 1e15)
-- ARGV[9i-1]   gcra: burst, the bucket's capacity in units (1..1e15); 0 for the window algorithms
-- ARGV[9i]     gcra: token = window_ms / gcd(window_ms, limit); 0 otherwise
-- ARGV[9i+1]   gcra: rate  = limit / gcd(window_ms, limit); 0 otherwise
-- ARGV[9i+2]   lease: the most units to reserve for the caller beyond cost (0: none; never for
--              a shadow hit, checked by limitd)
--
-- Returns integers only (a Lua float in a reply is truncated). Mode 0:
--   { all_allowed (1|0), then per hit: allowed (1|0), remaining, reset_ms, retry_after_ms,
--     leased, lease_ms },
--   or { -1 } if the receipt was voided (the check was given up and must not count).
-- Mode 1: { 1 } if the check had been counted and is now given back, { 0 } if it had not run (the
--   receipt is voided, so it never will), { 2 } if it was settled already.
--
-- Receipts. limitd reports a check as allowed if and only if it consumed its quota. When it
-- cannot know (the connection died or the answer came too late, after the script may have run),
-- it reports an error and later runs this script in mode 1 with the same receipt: an allowed
-- check wrote its receipt (the Redis time of the charge and which hits it charged) in the same
-- atomic run as its counts, so the give-back finds exactly what to undo. Both are replicated
-- together, so this holds across a failover too. A receipt lives ARGV[2] ms; limitd gives back
-- well within that.
--
-- Leases. A hit that asks for a lease and fits in an allowed check is charged, beyond its cost,
-- LEASE_SHARE-th of what is left after the check (whole units, at most the lease asked for, maybe
-- 0): the caller admits that many later requests itself, without asking. The units are counted
-- now, so admissions never pass the limit; as the quota runs out the blocks shrink to nothing and
-- every request is checked here again. lease_ms says how long the units may be spent: until the
-- current window ends (window algorithms; units of window s belong to window s), or window_ms
-- for gcra, which the caller shortens to its own lifetime (a gcra unit spent up to L ms after it
-- was charged lets any span of d ms admit at most burst + rate * (d + L)). remaining and reset_ms
-- then describe the state with the lease charged.
--
-- Decision. Every hit is evaluated in order against its key's state as earlier hits of this
-- check would leave it: a hit that fits is charged to that tentative state, one that does not fit
-- is not (it never applies). The check is allowed iff every non-shadow hit fits; shadow hits are
-- reported but never deny. Only an allowed check writes: every non-shadow hit is then consumed,
-- and each shadow hit only if it fitted. remaining and reset_ms describe the state after the check
-- (the stored one, untouched, if it was denied); retry_after_ms is 0 for a hit that fitted, else
-- the time until a request of the same cost fits (from the state the hit was evaluated against,
-- assuming no other traffic), always > 0. A cost above what the hit could ever hold (cost > limit
-- for the windows, cost > burst for gcra) never fits: its retry_after_ms is window_ms, which only
-- paces retries.
--
-- fixed_window. Windows aligned to Redis time: s = now - now % W. Fits iff count + cost <= limit.
--   remaining = limit - count; reset_ms = retry_after_ms = s + W - now (the window's end).
-- sliding_window. Two counters: estimate = prev * (W - e) / W + curr, e = now - s. Fits iff
--   estimate + cost <= limit, computed exactly as ceil(prev * (W - e) / W) + curr + cost <= limit
--   (equivalent because curr, cost and limit are integers). remaining = floor(limit - estimate);
--   reset_ms = s + W - now (the current window's end, as the protocol defines it); retry_after_ms =
--   the exact smallest wait after which the estimate, the previous window's weight decaying
--   linearly and then the current count becoming the previous one, lets cost fit.
-- gcra. A token bucket of capacity burst refilled at limit units per W, kept as its theoretical
--   arrival time TAT (the time the bucket is full again). Time is counted in ticks of 1/rate ms,
--   so one unit costs exactly `token` ticks (the emission interval W / limit ms), and the debt
--   D = TAT - now in ticks is an integer <= burst * token <= 2^52 (limitd checks). Fits iff
--   D + cost * token <= burst * token. remaining = whole units left = floor((burst*token - D) /
--   token); reset_ms = ceil(D / rate), until the bucket is full; retry_after_ms = ceil((D + cost *
--   token - burst * token) / rate).
--
-- Storage. Window algorithms: a hash {w = start of the current window (ms since the epoch of
-- Redis time), c = units in window w, p = units in window w - W}; a stored w of s - W rolls (c
-- becomes p), anything older reads as 0. Both window algorithms keep this one layout, so a rule
-- switching between them keeps its counts. Fixed-window keys expire at s + W, sliding-window keys
-- at s + 2W (their count is still needed as the previous window's). gcra: a hash {t, f, d}: TAT = t
-- + f / d ms (d = the rate it was written with; read at another rate, TAT is rounded up to the
-- ms); it expires at TAT, when the bucket is full again and the key would read as empty anyway.
-- A missing or stale state reads as an unused counter.
--
-- Why a script: the decision reads every state before any is written, and writes only if all
-- non-shadow hits pass. A script runs atomically, so no other check slips in between read and
-- write (the limit holds under any concurrency), keys cannot expire halfway through (they can
-- between the commands of a read-then-MULTI sequence), and the time comes from the one Redis clock
-- (TIME), never from limitd's. Scripts are replicated by their effects, so TIME before writes is
-- allowed. Why a hash per key holding its window (or TAT) rather than one key per window: the key
-- a check touches is then fixed by the request alone and can be passed in KEYS as Redis requires.
--
-- Arithmetic. Lua numbers are doubles, exact for integers up to 2^53; every stored or returned
-- value is an integer. Products that may pass 2^53 (prev * e with a large limit and a long
-- window) go through muldivmod, which never forms them.

local FIXED, SLIDING, GCRA = 0, 1, 2
local LEASE_SHARE = 4

-- Redis turns Lua numbers given to redis.call into text; %d keeps large integers exact and
-- never uses an exponent.
local function int(x)
  return string.format('%d', x)
end

-- The one clock: Redis TIME, in whole milliseconds since the epoch.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- floor(x / y) and x mod y, exact for integers 0 <= x < 2^52 and 1 <= y: the double quotient is
-- within one of the true one, and q * y <= x + y stays exact, so one correction settles it.
local function divmod(x, y)
  local q = math.floor(x / y)
  local r = x - q * y
  if r < 0 then
    q, r = q - 1, r + y
  elseif r >= y then
    q, r = q + 1, r - y
  end
  return q, r
end

local function ceil_div(x, y)
  local q, r = divmod(x, y)
  if r > 0 then
    q = q + 1
  end
  return q
end

-- floor(a * b / c) and (a * b) mod c, exact for integers 0 <= a < 2^53 and 0 <= b <= c < 2^35,
-- without forming a * b: Horner over a's 16-bit digits, keeping the partial remainder below c,
-- so every intermediate stays below 2^52.
local DIGIT = 65536
local function muldivmod(a, b, c)
  local q, r = 0, 0
  for shift = 48, 0, -16 do
    local digit = math.floor(a / 2 ^ shift) % DIGIT
    local qd
    qd, r = divmod(r * DIGIT + digit * b, c)
    q = q * DIGIT + qd
  end
  return q, r
end

-- ---------------------------------------------------------------------------------------------
-- Window state, shared by fixed_window and sliding_window: { curr, prev, rolled } at window start
-- s; rolled means the stored w (and p) must be rewritten.

local function load_window(key, h)
  local v = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if w == h.start then
    return { curr = c, prev = p, rolled = false }
  elseif w == h.start - h.window then
    return { curr = 0, prev = c, rolled = true }
  end
  return { curr = 0, prev = 0, rolled = true }
end

local function charge_window(st, h)
  return { curr = st.curr + h.cost, prev = st.prev, rolled = st.rolled }
end

local function store_window(key, st, h, expire_at)
  if st.rolled then
    redis.call('HSET', key, 'w', int(h.start), 'c', int(st.curr), 'p', int(st.prev))
  else
    redis.call('HSET', key, 'c', int(st.curr))
  end
  redis.call('PEXPIREAT', key, int(expire_at))
end

-- fixed_window ---------------------------------------------------------------------------------

local fixed = { load = load_window, charge = charge_window }

function fixed.fits(st, h)
  return st.curr + h.cost <= h.limit
end

function fixed.retry(st, h)
  if h.cost > h.limit then
    return h.window
  end
  return h.left
end

function fixed.report(st, h)
  -- A limit lowered since the count was taken can leave the count above it.
  return math.max(0, h.limit - st.curr), h.left
end

function fixed.store(key, st, h)
  store_window(key, st, h, h.start + h.window)
end

-- sliding_window -------------------------------------------------------------------------------

-- The previous window's count as the sliding window still sees it when k ms of the current
-- window are left: ceil(prev * k / W).
local function weighted(prev, k, window)
  local q, r = muldivmod(prev, k, window)
  if r > 0 then
    q = q + 1
  end
  return q
end

-- The largest k in [0, kmax] with weighted(prev, k) <= room, for room >= 0 (k = 0 always fits).
-- Exactly floor(room * W / prev); the double quotient is within one of it and the exact test
-- settles it.
local function largest_fitting(prev, room, window, kmax)
  if prev <= room then
    return kmax
  end
  local k = math.min(kmax, math.floor(room * window / prev))
  while k > 0 and weighted(prev, k, window) > room do
    k = k - 1
  end
  while k < kmax and weighted(prev, k + 1, window) <= room do
    k = k + 1
  end
  return k
end

local sliding = { load = load_window, charge = charge_window }

function sliding.fits(st, h)
  return weighted(st.prev, h.left, h.window) + st.curr + h.cost <= h.limit
end

function sliding.retry(st, h)
  if h.cost > h.limit then
    return h.window
  end
  local room = h.limit - st.curr - h.cost
  if room >= 0 then
    -- Fits later in this window, once the previous window's weight has decayed enough: wait
    -- until only k ms are left. The hit did not fit now, so k < left and the wait is > 0.
    return h.left - largest_fitting(st.prev, room, h.window, h.left)
  end
  -- Only in the next window, where the current count becomes the previous one.
  return h.left + h.window - largest_fitting(st.curr, h.limit - h.cost, h.window, h.window)
end

function sliding.report(st, h)
  return math.max(0, h.limit - weighted(st.prev, h.left, h.window) - st.curr), h.left
end

function sliding.store(key, st, h)
  store_window(key, st, h, h.start + 2 * h.window)
end

-- gcra -----------------------------------------------------------------------------------------
-- State { debt }: TAT - now in ticks of 1 / rate ms, 0 when the bucket is full.

local gcra = {}

function gcra.load(key, h)
  local v = redis.call('HMGET', key, 't', 'f', 'd')
  local t, f, d = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3])
  if t == nil then
    return { debt = 0 }
  end
  if d ~= h.rate and f > 0 then
    -- Written at another rate (the rule changed): round the TAT up to the next ms.
    t, f = t + 1, 0
  end
  return { debt = math.max(0, (t - h.now) * h.rate + f) }
end

function gcra.charge(st, h)
  return { debt = st.debt + h.cost * h.token }
end

function gcra.fits(st, h)
  return h.cost <= h.burst and st.debt <= (h.burst - h.cost) * h.token
end

function gcra.retry(st, h)
  if h.cost > h.burst then
    return h.window
  end
  return ceil_div(st.debt - (h.burst - h.cost) * h.token, h.rate)
end

function gcra.report(st, h)
  local capacity = h.burst * h.token
  local remaining = 0
  if st.debt < capacity then
    remaining = divmod(capacity - st.debt, h.token)
  end
  return remaining, ceil_div(st.debt, h.rate)
end

function gcra.store(key, st, h)
  local ms, ticks = divmod(st.debt, h.rate)
  local tat = h.now + ms
  redis.call('HSET', key, 't', int(tat), 'f', int(ticks), 'd', int(h.rate))
  if ticks > 0 then
    tat = tat + 1
  end
  redis.call('PEXPIREAT', key, int(tat))
end

-- Give-back -----------------------------------------------------------------------------------
-- Undoes one hit's charge made at Redis time t. A window hit's units are in window t - t % W,
-- which is now the current window (c), the previous one (p), or gone (nothing to undo). A gcra
-- hit moved the TAT by cost * token ticks: move it back, never below now.

local function give_back_window(key, h, t)
  local v = redis.call('HMGET', key, 'w', 'c', 'p')
  local w = tonumber(v[1])
  local s = t - t % h.window
  if w == s then
    redis.call('HSET', key, 'c', int(math.max(0, (tonumber(v[2]) or 0) - h.cost)))
  elseif w == s + h.window then
    redis.call('HSET', key, 'p', int(math.max(0, (tonumber(v[3]) or 0) - h.cost)))
  end
end

fixed.give_back = give_back_window
sliding.give_back = give_back_window

function gcra.give_back(key, h)
  if redis.call('EXISTS', key) == 0 then
    return
  end
  local debt = math.max(0, gcra.load(key, h).debt - h.cost * h.token)
  if debt == 0 then
    redis.call('DEL', key)
  else
    gcra.store(key, { debt = debt }, h)
  end
end

-- ---------------------------------------------------------------------------------------------

local ALGORITHMS = { [FIXED] = fixed, [SLIDING] = sliding, [GCRA] = gcra }

local receipt, receipt_ms = KEYS[1], ARGV[2]
local now = clock_ms()
local n = #KEYS - 1

local function parse_hit(i)
  local a = 2 + 9 * (i - 1)
  local h = {
    key = KEYS[i + 1],
    alg = ALGORITHMS[tonumber(ARGV[a + 1])],
    shadow = ARGV[a + 2] == '1',
    limit = tonumber(ARGV[a + 3]),
    window = tonumber(ARGV[a + 4]),
    cost = tonumber(ARGV[a + 5]),
    burst = tonumber(ARGV[a + 6]),
    token = tonumber(ARGV[a + 7]),
    rate = tonumber(ARGV[a + 8]),
    lease = tonumber(ARGV[a + 9]),
    leased = 0,
    now = now,
  }
  h.start = now - now % h.window
  h.left = h.start + h.window - now
  return h
end

if ARGV[1] == '1' then
  local r = redis.call('GET', receipt)
  if not r then
    -- The check never ran: void its receipt, so that it cannot run later either.
    redis.call('SET', receipt, 'void', 'PX', receipt_ms)
    return { 0 }
  end
  -- 'L<time> <units of hit 1> ...'; an earlier script wrote '<time> <1|0 charged> ...'.
  local amounts = string.sub(r, 1, 1) == 'L'
  local t = tonumber(string.match(r, '^L?(%d+)'))
  if t == nil then
    return { 2 } -- 'void' or 'back': settled already
  end
  local i = 0
  for charged in string.gmatch(r, ' (%d+)') do
    i = i + 1
    local units = tonumber(charged)
    if units > 0 then
      local h = parse_hit(i)
      if amounts then
        h.cost = units
      end
      h.alg.give_back(h.key, h, t)
    end
  end
  redis.call('SET', receipt, 'back', 'PX', receipt_ms)
  return { 1 }
end

if redis.call('EXISTS', receipt) == 1 then
  return { -1 }
end

local hits = {}
local loaded, state = {}, {} -- key -> state as stored, and as this check would leave it
local all = 1

for i = 1, n do
  local h = parse_hit(i)
  hits[i] = h

  local st = state[h.key]
  if st == nil then
    st = h.alg.load(h.key, h)
    loaded[h.key], state[h.key] = st, st
  end
  h.fits = h.alg.fits(st, h)
  if h.fits then
    if h.cost > 0 then
      state[h.key] = h.alg.charge(st, h)
    end
    h.retry = 0
  else
    h.retry = h.alg.retry(st, h)
    if not h.shadow then
      all = 0
    end
  end
end

-- Leases, once the check is known to be allowed: a share of what is left, charged like a cost.
if all == 1 then
  for i = 1, n do
    local h = hits[i]
    if h.lease > 0 and h.fits and not h.shadow then
      local st = state[h.key]
      local left = h.alg.report(st, h)
      local units = math.min(h.lease, math.floor(left / LEASE_SHARE))
      if units > 0 then
        state[h.key] = h.alg.charge(st, { cost = units, token = h.token })
        h.leased = units
      end
    end
  end
end

local reply = { all }
for i = 1, n do
  local h = hits[i]
  local st = loaded[h.key]
  if all == 1 then
    st = state[h.key]
  end
  local remaining, reset = h.alg.report(st, h)
  reply[#reply + 1] = h.fits and 1 or 0
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = h.retry
  reply[#reply + 1] = h.leased
  if h.alg == gcra then
    reply[#reply + 1] = h.window
  else
    reply[#reply + 1] = h.left
  end
end

if all == 1 then
  -- Write each changed state once, with the parameters of its first hit; a batch of cost-0 hits
  -- (or of shadow hits that did not fit) writes nothing. The receipt records the units charged.
  local charged = { 'L' .. int(now) }
  for i = 1, n do
    local h = hits[i]
    if state[h.key] ~= loaded[h.key] then
      h.alg.store(h.key, state[h.key], h)
      loaded[h.key] = state[h.key]
    end
    charged[i + 1] = int((h.fits and h.cost or 0) + h.leased)
  end
  redis.call('SET', receipt, table.concat(charged, ' '), 'PX', receipt_ms)
end

return reply
