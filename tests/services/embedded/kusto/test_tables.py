"""`.create table`, `.create-merge table` and `.drop table` on the local Kusto endpoint, sent by
azure-kusto-data and read back with it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.exceptions import KustoServiceError

from services.embedded.kusto.database import write_database
from services.embedded.kusto.endpoint import LocalKusto

EVERY_TYPE = (
    "At:datetime, Name:string, Count:long, Small:int, Ratio:real, Price:decimal, Id:guid, "
    "Took:timespan, Flag:bool, Details:dynamic"
)


@pytest.fixture(scope="module")
def kusto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKusto]:
    path = write_database(tmp_path_factory.mktemp("local_kusto_tables") / "Landing.duckdb", count=10)
    with LocalKusto(path, writable=True) as endpoint:
        yield endpoint


@pytest.fixture
def client(kusto: LocalKusto) -> Iterator[KustoClient]:
    with KustoClient(KustoConnectionStringBuilder.with_no_authentication(kusto.url)) as kusto_client:
        yield kusto_client


@pytest.fixture
def name() -> str:
    return f"Made_{uuid.uuid4().hex[:12]}"


def schema(client: KustoClient, kusto: LocalKusto, table: str) -> list[tuple[str, str]]:
    rows = client.execute(kusto.database, f"{table} | getschema").primary_results[0]
    return [(row["ColumnName"], row["ColumnType"]) for row in rows]


def tables(client: KustoClient, kusto: LocalKusto) -> set[str]:
    return {
        row["TableName"] for row in client.execute_mgmt(kusto.database, ".show tables").primary_results[0]
    }


def test_create_table_makes_every_kusto_type_as_the_engine_reads_it_back(
    client: KustoClient, kusto: LocalKusto, name: str
) -> None:
    answered = client.execute_mgmt(kusto.database, f".create table {name} ({EVERY_TYPE})").primary_results[0]

    declared = [tuple(part.strip().split(":")) for part in EVERY_TYPE.split(",")]
    assert schema(client, kusto, name) == declared
    (row,) = answered
    assert (row["TableName"], row["DatabaseName"]) == (name, kusto.database)
    assert [(c["Name"], c["CslType"]) for c in json.loads(row["Schema"])["OrderedColumns"]] == declared
    # Rows go into it as into a table the engine made itself.
    client.execute_mgmt(
        kusto.database,
        f".ingest inline into table {name} <| "
        '2026-01-02T00:00:00Z,ü,5,1,0.5,1.25,00000000-0000-0000-0000-000000000001,01:00:00,true,"{""a"":1}"',
    )
    (stored,) = client.execute(kusto.database, name).primary_results[0]
    assert (stored["Name"], stored["Count"], Decimal(str(stored["Price"])), stored["Details"]) == (
        "ü",
        5,
        Decimal("1.25"),
        {"a": 1},
    )


def test_create_table_of_a_table_there_leaves_it_as_it_was(
    client: KustoClient, kusto: LocalKusto, name: str
) -> None:
    client.execute_mgmt(kusto.database, f".create table {name} (A:long, B:string)")
    client.execute_mgmt(kusto.database, f".create table {name} (C:real)")

    assert schema(client, kusto, name) == [("A", "long"), ("B", "string")]


def test_create_merge_adds_the_columns_a_table_lacks_and_keeps_its_rows(
    client: KustoClient, kusto: LocalKusto, name: str
) -> None:
    client.execute_mgmt(kusto.database, f".create-merge table {name} (A:long, B:string)")
    client.execute_mgmt(kusto.database, f".set-or-append {name} <| print A=1, B='x'")
    client.execute_mgmt(kusto.database, f".create-merge table {name} (a:long, C:datetime, ['D e']:dynamic)")

    assert schema(client, kusto, name) == [
        ("A", "long"),
        ("B", "string"),
        ("C", "datetime"),
        ("D e", "dynamic"),
    ]
    (row,) = client.execute(kusto.database, name).primary_results[0]
    assert (row["A"], row["B"], row["C"]) == (1, "x", None)


def test_create_merge_refuses_a_column_of_another_type_naming_it(
    client: KustoClient, kusto: LocalKusto, name: str
) -> None:
    client.execute_mgmt(kusto.database, f".create table {name} (A:long, B:string)")

    with pytest.raises(KustoServiceError, match=r"column 'B' is string there, not real"):
        client.execute_mgmt(kusto.database, f".create-merge table {name} (C:long, B:real)")
    # Nothing of the refused command was applied.
    assert schema(client, kusto, name) == [("A", "long"), ("B", "string")]


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (".create table {t} (A:long, B:stringy)", "'stringy' is not a Kusto type"),
        (".create table {t} (A:long, a:string)", "column 'a' is named twice"),
        (".create table {t} (A long)", "is not a column, written as name:type"),
    ],
)
def test_malformed_table_commands_are_refused_naming_the_problem(
    client: KustoClient, kusto: LocalKusto, name: str, command: str, problem: str
) -> None:
    with pytest.raises(KustoServiceError, match=problem):
        client.execute_mgmt(kusto.database, command.format(t=name))
    assert name not in tables(client, kusto)


def test_drop_table_drops_it_and_its_ingest_by_tags(
    client: KustoClient, kusto: LocalKusto, name: str
) -> None:
    tagged = f"with (tags='[\"ingest-by:{name}\"]', ingestIfNotExists='[\"{name}\"]')"
    client.execute_mgmt(kusto.database, f".set-or-append {name} {tagged} <| print A=1")
    left = client.execute_mgmt(kusto.database, f".drop table {name}").primary_results[0]

    assert name not in {row["TableName"] for row in left}
    assert name not in tables(client, kusto)
    with pytest.raises(KustoServiceError, match=f"Entity ID '{name}' of kind 'Table' was not found"):
        client.execute_mgmt(kusto.database, f".drop table {name}")
    client.execute_mgmt(kusto.database, f".drop table {name} ifexists")
    # The tag went with the table: the same ingestion into a new table of that name ingests again.
    client.execute_mgmt(kusto.database, f".set-or-append {name} {tagged} <| print A=1")
    assert client.execute(kusto.database, f"{name} | count").primary_results[0][0]["Count"] == 1


def test_read_only_endpoint_refuses_table_commands(tmp_path: Path) -> None:
    path = write_database(tmp_path / "ReadOnly.duckdb", count=5)
    with (
        LocalKusto(path, writable=False) as endpoint,
        KustoClient(KustoConnectionStringBuilder.with_no_authentication(endpoint.url)) as client,
    ):
        for command in (
            ".create table T (A:long)",
            ".create-merge table T (A:long)",
            ".drop table StormEvents",
        ):
            with pytest.raises(KustoServiceError, match="writes are disabled"):
                client.execute_mgmt(endpoint.database, command)
