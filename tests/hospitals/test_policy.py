import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from hospitals.dp import Accountant
from hospitals.policy import POLICY_TEMPLATE, NodePolicy, PolicyError, load_policy


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_a_complete_policy(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
        max_lifetime_epsilon = 4
        delta = 1e-6
        accountant = "prv"
        min_cohort_size = 200
        require_he = false
        allowed_studies = ["sepsis-2026", "readmission-2027"]
        """,
    )

    policy = load_policy(path)

    assert policy == NodePolicy(
        max_lifetime_epsilon=4.0,
        delta=1e-6,
        accountant=Accountant.PRV,
        min_cohort_size=200,
        require_he=False,
        allowed_studies=("sepsis-2026", "readmission-2027"),
    )
    assert isinstance(policy.max_lifetime_epsilon, float)
    assert policy.accountant is Accountant.PRV


def test_keys_left_out_take_the_defaults(tmp_path: Path) -> None:
    assert load_policy(write_policy(tmp_path, "min_cohort_size = 80\n")) == NodePolicy(
        min_cohort_size=80
    )


def test_template_documents_every_key_and_parses_to_the_defaults(tmp_path: Path) -> None:
    assert set(tomllib.loads(POLICY_TEMPLATE)) == {field.name for field in fields(NodePolicy)}
    assert load_policy(write_policy(tmp_path, POLICY_TEMPLATE)) == NodePolicy()


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "policy.toml"
    with pytest.raises(PolicyError, match="not found") as raised:
        load_policy(path)
    assert str(path) in str(raised.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "delta = = 1\n")
    with pytest.raises(PolicyError, match="not valid TOML") as raised:
        load_policy(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("epsilon_cap = 3.0", "epsilon_cap"),  # unknown key
        ("[policy]\ndelta = 1e-5", "policy"),  # keys must sit at the top level
        ('max_lifetime_epsilon = "3"', "max_lifetime_epsilon"),
        ("max_lifetime_epsilon = true", "max_lifetime_epsilon"),
        ("max_lifetime_epsilon = 0", "max_lifetime_epsilon"),
        ("max_lifetime_epsilon = -1.0", "max_lifetime_epsilon"),
        ("max_lifetime_epsilon = inf", "max_lifetime_epsilon"),
        ("max_lifetime_epsilon = nan", "max_lifetime_epsilon"),
        ("delta = 0.0", "delta"),
        ("delta = 1.0", "delta"),
        ('delta = "1e-5"', "delta"),
        ('accountant = "gdp"', "accountant"),
        ("accountant = 1", "accountant"),
        ("min_cohort_size = 0", "min_cohort_size"),
        ("min_cohort_size = 10.5", "min_cohort_size"),
        ("min_cohort_size = true", "min_cohort_size"),
        ('require_he = "yes"', "require_he"),
        ("require_he = 1", "require_he"),
        ('allowed_studies = "sepsis-2026"', "allowed_studies"),
        ("allowed_studies = [1, 2]", "allowed_studies"),
        ('allowed_studies = [""]', "allowed_studies"),
        ("consent_waiver = true", "consent_waiver"),
        ('consent_waiver = ["board"]', "consent_waiver"),
        (f'consent_waiver = "{"x" * 501}"', "consent_waiver"),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path: Path, line: str, key: str) -> None:
    path = write_policy(tmp_path, line + "\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"'{key}'" in message


def test_policies_built_in_code_are_validated_too() -> None:
    with pytest.raises(PolicyError, match="'delta'"):
        NodePolicy(delta=2.0)
    with pytest.raises(PolicyError, match="'accountant'"):
        NodePolicy(accountant="gdp")  # type: ignore[arg-type]


def test_allowed_studies() -> None:
    assert NodePolicy().allows_study("any-study")
    restricted = NodePolicy(allowed_studies=("sepsis-2026",))
    assert restricted.allows_study("sepsis-2026")
    assert not restricted.allows_study("readmission-2027")


def test_consent_is_required_unless_the_policy_cites_a_waiver(tmp_path: Path) -> None:
    assert NodePolicy().consent_waiver == ""
    waiver = load_policy(
        write_policy(tmp_path, 'consent_waiver = """  Ethics board X,\n  decision 41 """\n')
    ).consent_waiver
    assert waiver == "Ethics board X, decision 41"
    assert load_policy(write_policy(tmp_path, 'consent_waiver = "   "\n')).consent_waiver == ""
