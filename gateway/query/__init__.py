"""Grafana's query API (`POST /api/ds/query`), minus the network: parse, plan, convert.

Everything here is pure: no sockets, no clock of its own (callers pass `now`), no registry
look-ups. The route (to come, wired through the proxy's Forwarder) does:

1. `parse_query_request(body, now)` (request.py): the time range (timerange.py, Grafana's
   relative times and date math) and typed queries, or a `QueryRequestError` (400) naming the
   field at fault.
2. For each query, find its source (by uid, by type for the org's default, or legacy id) and
   call `plan_query(query, time_range, source)` (plan.py). It answers either a `QueryPlan` or
   a failed `QueryResult` (unsupported type, bad field: a per-query error, not a 400).
3. Send each of `plan.requests` (exchange.py `UpstreamRequest`: method, path relative to the
   source URL, query params, body, headers, an optional body feed) through the Forwarder,
   concurrently across queries (bounded per request), and call
   `plan.convert([UpstreamResponse(status, body, feed), ...])`.
   A transport failure is the route's to turn into `query_failed(..., status=502,
   source=ErrorSource.DOWNSTREAM)`.
4. Answer `results_json({refId: result})` with `response_status(results)` (results.py): 200,
   or 400 as soon as any query failed, as Grafana does.

Modules:
    timerange.py   from/to: epoch ms, Go durations, now-1h, now/d, ISO||+1d (UTC)
    durations.py   Go/gtime durations: parse, FormatInterval, RoundInterval, String()
    step.py        Prometheus' and Loki's step rules
    request.py     the body, typed; field-naming validation
    frames.py      data frames and their JSON, as the plugin SDK writes it
    promstyle.py   Prometheus-style answers (Prometheus and Loki) -> frames; fast matrix path,
                   also fed chunk by chunk as the body arrives (MatrixFeed)
    prometheus.py  Prometheus plan + response framing (dataplane), exemplars, histograms
    loki.py        Loki plan + log frames (categorized labels) and metric frames
    influxql.py    InfluxQL plan (macros) + response framing
    influxql_builder.py  InfluxQL from Grafana's visual editor (measurement, select, tags...)
    flux.py        Flux plan (macros) + annotated CSV -> frames
    results.py     per-query results, the answer's JSON and HTTP status
    exchange.py    UpstreamRequest / UpstreamResponse / QueryPlan
    plan.py        source type -> planner
Each module's docstring names the Grafana source files it follows.
"""
