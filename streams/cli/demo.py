"""``cdrflow demo``: the whole pipeline on a month of synthetic traffic, on the embedded stack.

up -> load the reference plans and the generated accounts -> generate the month -> start
a background worker -> ingest with progress, waiting until every line has landed in
ClickHouse -> the summary and a few queries to try. The stack stays up for them
(``cdrflow down`` stops it, the worker included).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.syntax import Syntax

from streams.cli._common import ExitCode, StateDirOption, console, load_or_fail
from streams.cli.ingest import ingest, load
from streams.cli.offline import generate
from streams.cli.stack import up

#: Queries a finance user can run once the demo has landed (clickhouse-client or HTTP).
EXAMPLE_QUERIES = """\
-- revenue by plan and call class
SELECT plan_id, class, count() AS calls, sum(amount) / 10000 AS revenue_cny
FROM cdrflow.rated_calls FINAL WHERE status = 'rated'
GROUP BY plan_id, class ORDER BY revenue_cny DESC;

-- the ten accounts that spent most, with their balance after their last call
SELECT account_id, sum(amount) / 10000 AS spent_cny, argMax(balance, charge_time) / 10000 AS balance_cny
FROM cdrflow.rated_calls FINAL GROUP BY account_id ORDER BY spent_cny DESC LIMIT 10;

-- missed calls per day (unbilled: not answered)
SELECT local_day, count() AS missed FROM cdrflow.rated_calls FINAL
WHERE status = 'unbilled' GROUP BY local_day ORDER BY local_day;

-- rejected lines by reason, with an example each
SELECT reason, count() AS lines, any(detail) AS example FROM cdrflow.rejected_cdrs FINAL GROUP BY reason;

-- alerts raised
SELECT kind, count() FROM cdrflow.alerts FINAL GROUP BY kind;
"""


def demo(
    cdrs: Annotated[int, typer.Option("--cdrs", min=1, help="CDR lines to generate.")] = 200_000,
    accounts: Annotated[int, typer.Option("--accounts", min=1, help="Accounts to generate.")] = 2_000,
    month: Annotated[str, typer.Option("--month", help="Month of traffic, YYYY-MM.")] = "2026-03",
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the generated data.")] = 7,
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for every line to land.")] = 900.0,
) -> None:
    """Run the whole pipeline on a generated month of traffic and leave the stack up.

    Starts the embedded broker and ClickHouse, loads plans and accounts, generates the
    CDRs, starts a worker, ingests the file and waits until every line has landed, then
    prints the summary and queries to try. Run it again: data already ingested is kept.

    Example: cdrflow demo --cdrs 200000 --accounts 2000
    """
    from streams.settings import Settings
    from streams.stack.servers import start_worker

    if state_dir is not None:
        # The commands below find the servers the way every command does: from here.
        os.environ["CDRFLOW_STATE_DIR"] = str(state_dir)
    settings = Settings()
    data = settings.state_dir / "demo" / f"{month}-{cdrs}-{accounts}-{seed}"

    console.rule("1. the stack")
    up(state_dir=None, partitions=None)
    console.rule("2. a month of traffic")
    if (data / "cdrs.csv").exists():
        console.print(f"reusing {data}")
    else:
        generate(out=data, cdrs=cdrs, accounts=accounts, month=month, seed=seed, json_=False)
    console.rule("3. plans and accounts")
    load_or_fail(data / "plans", data / "accounts.toml")
    load(plans=data / "plans", accounts=data / "accounts.toml", json_=False)
    console.rule("4. a worker")
    worker = start_worker(settings)
    console.print(
        f"worker pid {worker.pid} ({'already running' if worker.reused else 'started'}), log {worker.log}",
        highlight=False,
    )
    console.rule("5. ingest, until every line has landed in ClickHouse")
    try:
        ingest(paths=[data / "cdrs.csv"], wait=True, follow_=False, force=False, timeout=timeout, json_=False)
    except typer.Exit as exit_:
        if exit_.exit_code != ExitCode.REFUSED:  # already ingested by an earlier demo; its results stand
            raise
        console.print("this file was ingested by an earlier demo: its results are in ClickHouse")
    console.rule("6. try it")
    params = settings.clickhouse_params()
    console.print(
        f"ClickHouse is at {params['host']}:{params['port']} (database {params['database']}); as the read-only "
        f"finance user (it asks for the password: "
        f"{'CDRFLOW_FINANCE_PASSWORD' if settings.finance_password else settings.state_dir / 'clickhouse' / 'finance.password'}):\n"
        f"  clickhouse-client --port {params['port']} --user finance --password "
        f"--query \"SELECT count() FROM cdrflow.rated_calls FINAL\"",
        highlight=False,
    )
    console.print(Syntax(EXAMPLE_QUERIES, "sql", theme="ansi_dark", background_color="default", word_wrap=True))
    console.print(
        f"Finance and the ledger, with the worker still running:\n"
        f"  cdrflow report revenue --from {month}-01 --to {month}-28 --by plan\n"
        f"  cdrflow report html --month {month} --out report.html\n"
        f"  cdrflow close-month {month}          # rent, services, minimum spend (once)\n"
        f"  cdrflow account show <account id>    # balance, state, usage, events, alerts",
        highlight=False,
    )
    console.print(
        "`cdrflow status` shows topics, lag and tables; `cdrflow export --out DIR` writes the CSV files; "
        "`cdrflow down` stops the stack and the worker (data kept).",
        highlight=False,
    )
