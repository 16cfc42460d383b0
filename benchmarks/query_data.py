"""A generated dataset for the query benchmark: 1M runs, 20M steps, plus two big trees.

Ids are hex digits padded to their OTLP lengths (32 and 16), as the
collector stores them. Rows are made inside ClickHouse (INSERT ... SELECT FROM numbers()), through
the real `spans` table, so the runs table is filled by the real
materialized view. Each run: a root agent span and 19 steps (LLM calls,
tool calls, and a sub-agent with steps of its own); statuses 90% completed,
6% failed, 2% cancelled, 2% still running (no root yet). Plus one run with
1,000 steps and one with 100,000 steps (100 sub-agents of 999 steps).
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

STEPS_PER_RUN = 20
BASE = "toDateTime64('2026-10-01 00:00:00', 9)"

# One row per span: run r = n / 20, step s = n % 20 (s = 0 is the root).
_SPAN_SQL = """
INSERT INTO spans (ProjectId, Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind,
    ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode,
    StatusMessage, SpanIndex, StepKind, StepName, StepStatus, Model, InputTokens, OutputTokens,
    TotalTokens, CostUsd, ErrorType, ErrorMessage, Input, Output, InputBytes, OutputBytes,
    Trigger, Version, SessionId)
SELECT
    'default',
    {base} + toIntervalMillisecond(r * 2000 + s * 50),
    leftPad(lower(hex(cityHash64(r, {seed}))), 16, '0')
        || leftPad(lower(hex(cityHash64(r, {seed} + 1))), 16, '0'),
    leftPad(lower(hex(cityHash64(r, s, {seed}))), 16, '0'),
    multiIf(s = 0, '', s >= 12, leftPad(lower(hex(cityHash64(r, 10, {seed}))), 16, '0'),
            leftPad(lower(hex(cityHash64(r, 0, {seed}))), 16, '0')),
    multiIf(s = 0, 'invoke_agent ' || name, kind = 'llm', 'chat gpt-4o', kind = 'tool',
            'execute_tool search', 'invoke_agent helper'),
    'Internal',
    'bench-svc',
    map('service.name', 'bench-svc', 'deployment.environment', 'prod'),
    'bench',
    map('gen_ai.operation.name', kind, 'gen_ai.agent.name', name, 'bench.step', toString(s)),
    if(s = 0, 950, 40) * 1000000,
    if(status = 'failed' AND s IN (0, 19), 'Error', 'Unset'),
    if(status = 'failed' AND s IN (0, 19), 'tool exploded', ''),
    s,
    kind,
    multiIf(s = 0, name, kind = 'tool', 'search', kind = 'agent', 'helper', 'chat gpt-4o'),
    multiIf(s = 0 OR s = 19, status, 'completed'),
    if(kind = 'llm', 'gpt-4o', ''),
    if(kind = 'llm', 300 + s, 0),
    if(kind = 'llm', 40 + s, 0),
    if(kind = 'llm', 340 + 2 * s, 0),
    if(kind = 'llm', (300 + s) * 2.5e-6 + (40 + s) * 1e-5, NULL),
    if(status = 'failed' AND s IN (0, 19), 'ToolError', ''),
    if(status = 'failed' AND s IN (0, 19), 'tool exploded', ''),
    repeat('What is the weather in Paris? ', 10),
    repeat('It is sunny and 21C. ', 10),
    300, 210,
    if(s = 0, ['scheduled', 'manual', 'test'][1 + r % 3], ''),
    if(s = 0, 'v' || toString(r % 5), ''),
    if(s = 0, 'session-' || toString(intDiv(r, 4)), '')
FROM (
    SELECT
        intDiv(number, 20) + {first_run} AS r,
        number % 20 AS s,
        ['weather_agent', 'billing_agent', 'research_agent', 'support_bot', 'planner'][1 + r % 5]
            || '_' || toString(r % 200) AS name,
        multiIf(r % 50 = 7, 'failed', r % 50 = 8, 'failed', r % 50 = 9, 'failed',
                r % 50 = 10, 'cancelled', r % 50 = 11, 'running', 'completed') AS status,
        multiIf(s = 0, 'agent', s = 10, 'agent', s % 2 = 1, 'llm', 'tool') AS kind
    FROM numbers({count})
)
WHERE NOT (status = 'running' AND s = 0)
"""


def generate_runs(client: Client, runs: int, first_run: int = 0, seed: int = 1) -> None:
    """`runs` runs of 20 spans each, in chunks ClickHouse inserts comfortably."""
    chunk = 100_000
    for start in range(first_run, first_run + runs, chunk):
        count = min(chunk, first_run + runs - start)
        client.command(
            _SPAN_SQL.format(base=BASE, seed=seed, first_run=start, count=count * STEPS_PER_RUN),
            settings={"max_partitions_per_insert_block": 0, "async_insert": 0},
        )


# A wide tree: a root, `children` sub-agents, each with `per_child` steps.
_TREE_SQL = """
INSERT INTO spans (ProjectId, Timestamp, TraceId, SpanId, ParentSpanId, SpanName, ServiceName,
    Duration, StatusCode, SpanIndex, StepKind, StepName, StepStatus, Model, InputTokens,
    OutputTokens, TotalTokens, Input, Output)
SELECT
    'default',
    {base} + toIntervalMillisecond(n),
    '{trace}',
    if(n = 0, '{root}', leftPad(lower(hex(cityHash64('{trace}', n))), 16, '0')),
    multiIf(n = 0, '', n <= {children}, '{root}',
            leftPad(lower(hex(cityHash64('{trace}', 1 + (n - {children} - 1) % {children}))),
                    16, '0')),
    if(n = 0, 'invoke_agent big', 'step'),
    'bench-svc',
    1000000,
    'Unset',
    n,
    multiIf(n = 0, 'agent', n <= {children}, 'agent', n % 2 = 0, 'llm', 'tool'),
    if(n = 0, 'big_tree_{size}', 'step ' || toString(n)),
    'completed',
    if(n % 2 = 0 AND n > {children}, 'gpt-4o', ''),
    if(n % 2 = 0 AND n > {children}, 100, 0),
    if(n % 2 = 0 AND n > {children}, 10, 0),
    if(n % 2 = 0 AND n > {children}, 110, 0),
    'input', 'output'
FROM (SELECT number AS n FROM numbers({size} + 1))
"""


def generate_tree(client: Client, trace: str, root: str, size: int, children: int) -> None:
    client.command(
        _TREE_SQL.format(base=BASE, trace=trace, root=root, size=size, children=children),
        settings={"async_insert": 0},
    )
