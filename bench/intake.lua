-- wrk script for bench/intake.sh: valid applications with unique Idempotency-Keys, and a share of
-- replays (the same key and body again) when REPLAY_PERCENT is set.
local counter = 0
local recent = {}
local thread_tag
local replay_percent = tonumber(os.getenv("REPLAY_PERCENT") or "0")
local body = os.getenv("OSAGO_BODY")
local api_key = os.getenv("OSAGO_KEY")
local path = os.getenv("OSAGO_PATH") or "/osago/application"

-- setup() runs in the main Lua state: seed it per run, or every run would reuse the
-- previous run's keys and measure replays.
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))

function setup(thread)
    thread:set("tag", tostring(math.random(1, 1e9)))
end

function init(args)
    thread_tag = tag or tostring(math.random(1, 1e9))
    math.randomseed(tonumber(thread_tag))
end

function request()
    local key
    if #recent > 0 and math.random(100) <= replay_percent then
        key = recent[math.random(#recent)]
    else
        counter = counter + 1
        key = "bench-" .. thread_tag .. "-" .. counter
        recent[(counter % 256) + 1] = key
    end
    return wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["X-API-Key"] = api_key,
        ["Idempotency-Key"] = key,
    }, body)
end

local replays = 0
function response(status, headers, body)
    if headers["Idempotent-Replayed"] then replays = replays + 1 end
end
