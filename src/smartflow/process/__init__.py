"""The process tree: the supervisor (arbiter) and what it shares with the
processes it forks.

One module per job; this package imports nothing itself, so a worker that
only wants `json_log` or `binding` does not load the arbiter.

  exit_codes      the exit statuses that are a contract, StartupError
  json_log        log_event and the JSON-lines `logging` handler
  binding         resolving and binding the listening address (SO_REUSEPORT)
  tls             the listening side's TLS context
  heartbeat       a worker's shared-memory heartbeat
  worker_context  what a forked process is told by the supervisor
  roles           the kinds of process the supervisor runs (gateway, ...)
  title           process titles (`smartflow: worker 2`)
  backoff         restart delays and crash-loop detection (a value)
  plan_types      the arbiter's state snapshot and its actions (values)
  plan            plan(state, now) -> actions: every decision, pure
  signals         the self-pipe the signal handlers write to
  startup         what the supervisor sets up before the first fork
  reload          merging a re-read config into the running one (SIGHUP)
  children        the live children: fork, readiness, reap, their book
  child           the first moments of a forked process
  arbiter         the loop: gather state, plan, carry the actions out
"""
