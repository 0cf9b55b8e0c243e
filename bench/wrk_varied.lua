-- Varied-body chat completions for bench/llm_proxy_bench.py (the "varied"
-- scenarios), the way SDK traffic looks: every request carries a different
-- body, hence a different Content-Length, and a different x-request-id.
--
--   wrk -t1 -c32 -d8s --latency -s bench/wrk_varied.lua URL -- MODEL STREAM KEY SALT
--
-- MODEL   the "model" field
-- STREAM  1 for "stream": true with stream_options.include_usage, else 0
-- KEY     sent as "Authorization: Bearer KEY"
-- SALT    a few characters unique to this wrk run, so no body or request id
--         repeats across runs either (the warm-up run, the next target)
--
-- The user message is "<SALT> request <N>: " followed by 8 to 247 words
-- (a fixed pseudo-random sequence, the same for every target), so bodies
-- range from about 0.2 KiB to 1.8 KiB. Word lists are built once in init();
-- request() only concatenates strings, which keeps wrk's own cost small.

local words = {
  "the", "model", "gateway", "request", "stream", "token", "budget", "answer",
  "latency", "provider", "route", "cache", "prompt", "system", "user", "assistant",
  "quickly", "summarise", "translate", "explain", "list", "three", "reasons", "why",
  "network", "packet", "kernel", "socket", "buffer", "worker", "process", "thread",
  "please", "short", "detailed", "example", "python", "function", "returns", "value",
  "weather", "tomorrow", "morning", "report", "invoice", "customer", "order", "shipping",
  "a", "an", "of", "to", "in", "and", "for", "with", "on", "at", "by", "from",
  "question", "context", "document", "paragraph",
}

local pool_size = 101  -- prime, so counter and pool index do not line up with anything
local pool = {}
local headers = {}
local body_head, body_tail, salt
local counter = 0

function init(args)
  local model = args[1] or "bench-model"
  local stream = args[2] == "1"
  local key = args[3] or ""
  salt = args[4] or "0"
  math.randomseed(7)
  for i = 1, pool_size do
    local n = 8 + (i * 37) % 240
    local t = {}
    for j = 1, n do
      t[j] = words[math.random(#words)]
    end
    pool[i] = table.concat(t, " ")
  end
  headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
    ["User-Agent"] = "OpenAI/Python 1.54.0",
    ["X-Stainless-Lang"] = "python",
    ["X-Stainless-Package-Version"] = "1.54.0",
    ["X-Stainless-Runtime"] = "CPython",
  }
  body_head = '{"model":"' .. model .. '","messages":[{"role":"system","content":'
    .. '"You are a benchmark."},{"role":"user","content":"' .. salt .. ' request '
  body_tail = '"}],"max_tokens":32'
    .. (stream and ',"stream":true,"stream_options":{"include_usage":true}' or '') .. '}'
end

function request()
  counter = counter + 1
  headers["X-Request-Id"] = salt .. "-" .. counter
  local body = body_head .. counter .. ": " .. pool[counter % pool_size + 1] .. body_tail
  return wrk.format("POST", nil, headers, body)
end
