"""The benchmark registry: entries, local-file overrides and their normalisation, offline failures, HumanEval."""

from __future__ import annotations

import json
import re
import time

import pytest

import tarpo.data.benchmarks as bm
from tarpo.config import ConfigError
from tarpo.io import MissingInputError
from tarpo.rewards import reward

PAPER = {
    # name: (kind, distribution)
    "gsm8k": ("math", "id"), "math": ("math", "id"), "math500": ("math", "id"), "amc23": ("math", "id"),
    "olympiadbench": ("math", "id"),
    "gpqa_diamond": ("choice", "ood"), "arc_challenge": ("choice", "ood"), "humaneval": ("code", "ood"),
    "synthetic_test_id": ("math", "id"), "synthetic_test_ood": ("math", "ood"),
    "gsm8k_train": ("math", "train"), "math_train": ("math", "train"), "dapo_math_17k": ("math", "train"),
    # ATP-Latent's data: GSM8K-Aug to train on, GSM-Hard, SVAMP and MultiArith out of distribution
    "gsm_hard": ("math", "ood"), "svamp": ("math", "ood"), "multiarith": ("math", "ood"),
    "gsm8k_aug": ("math", "train"),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(name, path, **extra):
    return bm.load_benchmark(name, overrides={name: {"path": str(path), **extra}})


def test_registry_lists_the_papers_benchmarks_with_kinds_and_flags():
    for name, (kind, distribution) in PAPER.items():
        entry = bm.REGISTRY[name]
        assert (entry.kind, entry.distribution) == (kind, distribution), name
        assert entry.ood == (distribution == "ood")
    assert set(bm.EVAL_BENCHMARKS) == {n for n, (_, d) in PAPER.items() if d != "train"}
    assert set(bm.TRAIN_SETS) == {"gsm8k_train", "math_train", "dapo_math_17k", "gsm8k_aug"}
    for entry in bm.REGISTRY.values():
        if entry.source == "hub":
            assert entry.repo and entry.split
            if entry.pinned:  # a pinned revision is a full commit sha
                assert re.fullmatch(r"[0-9a-f]{40}", entry.revision), entry.name
            else:
                assert entry.note, f"{entry.name}: say why the revision is not pinned"
    assert bm.REGISTRY["gpqa_diamond"].gated
    # every entry is pinned to a commit but GSM8K-Aug's (no public source states one)
    assert [b.name for b in bm.REGISTRY.values() if b.source == "hub" and not b.pinned] == ["gsm8k_aug"]
    table = bm.registry_table()
    assert [row["name"] for row in table] == list(bm.REGISTRY)


def test_unknown_names_and_override_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm9k'"):
        bm.get_benchmark("gsm9k")
    with pytest.raises(ConfigError, match="benchmarks.gsm8k"):
        bm.load_benchmark("gsm8k", overrides={"gsm8k": {"pth": "x.jsonl"}})
    assert bm.get_benchmark("arith_test_ood", datasets={"arith": {}}).ood  # any configured synthetic dataset


def test_synthetic_benchmarks_read_prepared_files(tmp_path):
    with pytest.raises(MissingInputError, match="tarpo prepare"):
        bm.load_benchmark("synthetic_test_id", data_root=tmp_path)
    (tmp_path / "synthetic").mkdir()
    write_jsonl(tmp_path / "synthetic" / "test_ood.jsonl",
                [{"id": "test_ood-00000", "question": "Ann has 30 apples. How many apples does Ann have now?",
                  "solution": "#### 30", "answer": "30", "steps": 0}])
    (rec,) = bm.load_benchmark("synthetic_test_ood", data_root=tmp_path)
    assert rec == {"id": "test_ood-00000", "question": "Ann has 30 apples. How many apples does Ann have now?",
                   "answer": "30", "kind": "math", "solution": "#### 30"}


def test_gsm8k_local_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Q1?", "answer": "3 * 400 = <<3*400=1200>>1200 and 34 more\n#### 1,234"},
        {"question": "Q2?", "answer": "It loses 5.\n#### -5"},
    ])
    recs = load("gsm8k", path)
    assert [(r["question"], r["answer"], r["kind"]) for r in recs] == [("Q1?", "1234", "math"), ("Q2?", "-5", "math")]
    assert len({r["id"] for r in recs}) == 2
    assert reward("3 * 412 = 1236, less 2 #### 1234", recs[0]["answer"]) == 1.0


def test_math_local_parquet_takes_the_last_boxed_answer(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {"problem": "Compute $\\frac{2}{4}$.", "level": "Level 1", "type": "Algebra",
         "solution": "First \\boxed{1} is wrong; it is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "Nested?", "level": "Level 5", "type": "Geometry",
         "solution": "So the area is $\\boxed{3\\sqrt{2}+\\left\\{1\\right\\}}$."},
        {"problem": "No box here", "level": "Level 2", "type": "Algebra", "solution": "It is 4."},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math.parquet")
    # The unboxed row has no answer: an error naming it, unless skip_bad_rows (then a warning).
    with pytest.raises(bm.BadRowsError, match=r"1 of 3 rows .*math.parquet.*row 3"):
        load("math", tmp_path / "math.parquet")
    with pytest.warns(UserWarning, match="1 of 3 rows"):
        recs = load("math", tmp_path / "math.parquet", skip_bad_rows=True)
    assert [r["answer"] for r in recs] == ["\\frac{1}{2}", "3\\sqrt{2}+\\left\\{1\\right\\}"]
    assert reward("so one half #### 1/2", recs[0]["answer"]) == 1.0
    # MATH-500 rows carry the answer; AMC23's answers can be floats; OlympiadBench's are lists
    (m500,) = load("math500", write_jsonl(tmp_path / "m500.jsonl", [
        {"problem": "P", "solution": "... \\boxed{7}", "answer": "7", "subject": "Algebra", "level": 2,
         "unique_id": "test/algebra/1.json"}]))
    assert (m500["id"], m500["answer"]) == ("test/algebra/1.json", "7")
    (amc,) = load("amc23", write_jsonl(tmp_path / "amc.jsonl", [{"id": 3, "question": "A?", "answer": 27.0}]))
    assert (amc["id"], amc["answer"]) == ("3", "27")
    (oly,) = load("olympiadbench", write_jsonl(tmp_path / "oly.jsonl", [
        {"id": 2231, "question": "Find all x.", "final_answer": ["$1$", "$-2$"], "solution": ["..."]}]))
    assert oly["answer"] == "1, -2"


def test_numeric_golds_are_written_canonically():
    cases = {3.0: "3", "3.0": "3", -5.5: "-5.5", "-5.50": "-5.5", "1,234": "1234", -0.0: "0", 12: "12",
             3244047.0999999996: "3244047.1", 1500.0000000000002: "1500", 14053029.666666666: "14053029.6666667",
             0.0016791648: "0.0016791648", 1e20: "100000000000000000000", 12345678901234567: "12345678901234567",
             ".5": "0.5"}
    assert {value: bm.numeric_gold(value) for value in cases} == cases
    for bad in (None, "", "n/a", float("nan"), float("inf"), True):
        assert bm.numeric_gold(bad) is None, bad


def test_atp_latent_eval_sets_from_local_files_and_their_float_golds(tmp_path):
    # rows as the hub serves them (reasoning-machines/gsm-hard, ChilleD/SVAMP, ChilleD/MultiArith)
    hard = load("gsm_hard", write_jsonl(tmp_path / "gsm_hard.jsonl", [
        {"input": "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4933828. How much does she make?",
         "code": "def solution():\n    return (16 - 3 - 4933828) * 2", "target": -9867630.0},
        {"input": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?",
         "code": "def solution():\n    return 2 + 2 / 2", "target": 3.0},
        {"input": "531811 downloads, then three times as many, then 30% fewer. How many in total?",
         "code": "def solution():\n    ...", "target": 3244047.0999999996},
    ]))
    assert hard == [
        {"id": "gsm_hard-00000", "question": "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4933828. "
         "How much does she make?", "answer": "-9867630", "kind": "math"},
        {"id": "gsm_hard-00001", "question": "A robe takes 2 bolts of blue fiber and half that much white fiber. "
         "How many bolts?", "answer": "3", "kind": "math"},
        {"id": "gsm_hard-00002", "question": "531811 downloads, then three times as many, then 30% fewer. "
         "How many in total?", "answer": "3244047.1", "kind": "math"},
    ]
    svamp = load("svamp", write_jsonl(tmp_path / "svamp.jsonl", [
        {"ID": "chal-777", "Body": "There are 87 oranges and 290 bananas in Philip's collection. If the bananas "
         "are organized into 2 groups and oranges are organized into 93 groups", "Question": "How big is each "
         "group of bananas?", "Equation": "( 290.0 / 2.0 )", "Answer": 145.0, "Type": "Common-Division"},
        {"ID": "chal-12", "Body": "Jack had 9 action figures.", "Question": "How many more did he need to have 12?",
         "Equation": "( 12.0 - 9.0 )", "Answer": 3.0, "Type": "Subtraction"},
    ]))
    assert svamp == [
        {"id": "chal-777", "question": "There are 87 oranges and 290 bananas in Philip's collection. If the bananas "
         "are organized into 2 groups and oranges are organized into 93 groups How big is each group of bananas?",
         "answer": "145", "kind": "math"},
        {"id": "chal-12", "question": "Jack had 9 action figures. How many more did he need to have 12?",
         "answer": "3", "kind": "math"},
    ]
    multi = load("multiarith", write_jsonl(tmp_path / "multiarith.jsonl", [
        {"question": " Paige had 11 songs on her mp3 player. If she deleted 9 old songs from it and then added 8 "
         "new songs, how many songs does she have on her mp3 player? ", "final_ans": "10"},
        {"question": " Wendy uploaded 79 pictures. She put 44 into one album and the rest into 5 albums. How many "
         "pictures were in each album? ", "final_ans": "7"},
    ]))
    assert multi == [
        {"id": "multiarith-00000", "question": "Paige had 11 songs on her mp3 player. If she deleted 9 old songs from "
         "it and then added 8 new songs, how many songs does she have on her mp3 player?", "answer": "10",
         "kind": "math"},
        {"id": "multiarith-00001", "question": "Wendy uploaded 79 pictures. She put 44 into one album and the rest "
         "into 5 albums. How many pictures were in each album?", "answer": "7", "kind": "math"},
    ]
    # the verifier compares numbers: target 3.0 takes "3" and "3.0"; negative and non-integer golds work
    robe, ducks, downloads = hard[1]["answer"], hard[0]["answer"], hard[2]["answer"]
    assert reward("2 + 1 = 3 #### 3", robe) == reward("#### 3.0", robe) == 1.0
    assert reward("#### 4", robe) == 0.0
    assert reward("#### -9867630", ducks) == reward("#### -9,867,630", ducks) == 1.0
    assert reward("#### 9867630", ducks) == 0.0
    assert reward("#### 3244047.1", downloads) == 1.0 and reward("#### 3244047", downloads) == 0.0
    assert reward("#### 145", svamp[0]["answer"]) == reward("#### 10", multi[0]["answer"]) == 1.0


def test_atp_latent_eval_rows_missing_a_field_are_an_error_naming_them(tmp_path):
    with pytest.raises(bm.BadRowsError, match=r"gsm_hard.*1 of 2 rows .*line 2, .*its keys: input, code\)"):
        load("gsm_hard", write_jsonl(tmp_path / "h.jsonl", [{"input": "Q?", "target": 1.0}, {"input": "Q?", "code": "x"}]))
    with pytest.raises(bm.BadRowsError, match=r"svamp.*1 of 1 rows .*its keys: ID, Body, Answer\)"):
        load("svamp", write_jsonl(tmp_path / "s.jsonl", [{"ID": "a", "Body": "B.", "Answer": 2.0}]))
    with pytest.raises(bm.BadRowsError, match=r"multiarith.*1 of 1 rows .*its keys: question, final_ans\)"):
        load("multiarith", write_jsonl(tmp_path / "m.jsonl", [{"question": "Q?", "final_ans": "n/a"}]))  # not a number
    with pytest.raises(bm.BadRowsError, match=r"gsm8k_aug.*1 of 1 rows .*its keys: question, answer\)"):
        load("gsm8k_aug", write_jsonl(tmp_path / "a.jsonl", [{"question": "Q?", "answer": "5"}]))  # no steps


def test_gsm8k_aug_steps_become_the_solution_atp_latent_splits(tmp_path):
    from tarpo.atp_sft import cot_steps
    from tarpo.rewards import gold_chain

    rows = [
        {"question": "Out of 600 employees, 30% got a raise and 10% a promotion. How many got either?",
         "steps": ["<<600*30/100=180>>", "<<600*10/100=60>>", "<<180+60=240>>"], "answer": "240"},
        # a mirror's `cot` as one string, a result written '.5', a thousands separator in the answer
        {"question": "Half of 2 apples, times 2500?", "cot": "<<2/2=1>> <<1/2=.5>> <<.5*2500=1250>>",
         "answer": "1,250"},
    ]
    aug, mirror = load("gsm8k_aug", write_jsonl(tmp_path / "aug.jsonl", rows))
    assert aug == {"id": "gsm8k_aug-00000", "question": rows[0]["question"], "answer": "240", "kind": "math",
                   "solution": "600*30/100 = 180. 600*10/100 = 60. 180+60 = 240. #### 240"}
    assert mirror["solution"] == "2/2 = 1. 1/2 = 0.5. .5*2500 = 1250. #### 1250" and mirror["answer"] == "1250"
    # ATP-Latent's SFT reads one CoT step per calculation; the chain is each step's result
    assert cot_steps(aug["solution"]) == (["600*30/100 = 180.", "600*10/100 = 60.", "180+60 = 240."], "#### 240")
    assert cot_steps(mirror["solution"]) == (["2/2 = 1.", "1/2 = 0.5.", ".5*2500 = 1250."], "#### 1250")
    assert gold_chain(aug["solution"]) == ["180", "60", "240"]
    assert gold_chain(mirror["solution"]) == ["1", "0.5", "1250"]
    assert reward("600*30/100 = 180. 600*10/100 = 60. 180+60 = 240. #### 240", aug["answer"]) == 1.0


def test_prepare_exports_gsm8k_aug_for_the_atp_latent_stages(tmp_path):
    from tarpo import cli

    path = write_jsonl(tmp_path / "aug.jsonl", [
        {"question": "Q1?", "steps": ["<<2*3=6>>"], "answer": "6"},
        {"question": "Q2?", "steps": ["<<6-1=5>>", "<<5*2=10>>"], "answer": "10"},
    ])
    config = json.dumps({"benchmarks": {"gsm8k_aug": {"path": str(path)}}})
    assert cli.main(["prepare", "--config-json", config, "--dataset", "gsm8k_aug", "--out", str(tmp_path / "o")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "train.jsonl").read_text().splitlines()]
    assert [r["solution"] for r in rows] == ["2*3 = 6. #### 6", "6-1 = 5. 5*2 = 10. #### 10"]


def test_arc_local_file_letters_the_options(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", [
        {"id": "Mercury_1", "question": "Which is a metal?",
         "choices": {"text": ["wood", "glass", "iron", "paper"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
        {"id": "NYSEDREGENTS_2", "question": "Which is a gas?",
         "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]}, "answerKey": "2"},
    ])
    first, second = load("arc_challenge", path)
    assert first["kind"] == "choice" and first["answer"] == "C" and first["choices"][2] == "iron"
    assert "A. wood" in first["question"] and "C. iron" in first["question"]
    assert second["answer"] == "B" and "B. steam" in second["question"]  # digit labels become letters
    assert reward("iron conducts #### C", first["answer"], kind="choice") == 1.0
    assert reward("#### (B)", second["answer"], kind="choice") == 1.0


def test_gpqa_local_csv_shuffles_options_deterministically(tmp_path):
    import csv

    path = tmp_path / "gpqa_diamond.csv"
    fields = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i in range(6):
            writer.writerow({"Record ID": f"rec{i}", "Question": f"Which particle {i}?", "Correct Answer": "muon",
                             "Incorrect Answer 1": "pion", "Incorrect Answer 2": "kaon", "Incorrect Answer 3": "tau"})
    recs = load("gpqa_diamond", path)
    assert recs == load("gpqa_diamond", path)  # the same letters every time
    for rec in recs:
        assert rec["kind"] == "choice" and sorted(rec["choices"]) == ["kaon", "muon", "pion", "tau"]
        assert rec["choices"]["ABCD".index(rec["answer"])] == "muon"
        assert f"{rec['answer']}. muon" in rec["question"]
    assert len({rec["answer"] for rec in recs}) > 1  # the gold is not always in the same place


def test_dapo_rows_are_unwrapped_and_deduplicated(tmp_path):
    prompt = ("Solve the following math problem step by step. The last line of your response should be of the form "
              "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\nWhat is 6*7?\n\n"
              "Remember to put your answer on its own line after \"Answer:\".")
    row = {"data_source": "math_dapo", "prompt": [{"content": prompt, "role": "user"}], "ability": "MATH",
           "reward_model": {"ground_truth": "42", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "abc"}}
    (rec,) = load("dapo_math_17k", write_jsonl(tmp_path / "dapo.jsonl", [row, row, row]))
    assert rec == {"id": "abc", "question": "What is 6*7?", "answer": "42", "kind": "math"}


def test_revision_and_split_overrides_reach_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return [{"question": "Q?", "answer": "x\n#### 5"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(bm, "hub_offline", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    (rec,) = bm.load_benchmark("gsm8k", overrides={"gsm8k": {"revision": "abc123", "split": "train"}})
    assert rec["answer"] == "5"
    (args, kwargs), = calls
    assert args == ("openai/gsm8k", "main")
    assert kwargs["revision"] == "abc123" and kwargs["split"] == "train"
    assert kwargs["cache_dir"] == str(tmp_path / "hf" / "datasets")


def test_an_unpinned_entry_warns_at_its_branch_and_not_at_a_given_commit(tmp_path, monkeypatch):
    import warnings

    import datasets

    rows = [{"question": "Q?", "steps": ["<<2*3=6>>"], "answer": "6"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    monkeypatch.setattr(bm, "hub_offline", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.warns(UserWarning, match=r"'gsm8k_aug' \(whynlp/gsm8k-aug\) is loaded at revision 'main', a branch"):
        (rec,) = bm.load_benchmark("gsm8k_aug")
    assert rec["answer"] == "6"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bm.load_benchmark("gsm8k_aug", overrides={"gsm8k_aug": {"revision": "0" * 40}})
        bm.load_benchmark("gsm8k")  # pinned: no warning


@pytest.mark.parametrize("name", ["gsm8k", "gpqa_diamond", "dapo_math_17k", "gsm_hard", "svamp", "multiarith",
                                  "gsm8k_aug"])
def test_offline_without_a_local_copy_fails_fast_naming_the_dataset(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    entry = bm.REGISTRY[name]
    started = time.perf_counter()
    with pytest.raises(MissingInputError) as err:
        bm.load_benchmark(name)
    assert time.perf_counter() - started < 10
    message = str(err.value)
    for part in (f"'{name}'", entry.repo, entry.revision, "load_dataset(", "HF_HOME", f"benchmarks: {{{name}: {{path:"):
        assert part in message, part
    assert ("gated" in message) == entry.gated


def test_humaneval_loads_offline_and_the_canonical_solution_passes():
    recs = bm.load_benchmark("humaneval")
    assert len(recs) == 164 and len({r["id"] for r in recs}) == 164
    rec = recs[0]
    assert rec["id"] == "HumanEval/0" and rec["kind"] == "code"
    assert rec["prompt"] in rec["question"] or rec["prompt"].rstrip() in rec["question"]
    kw = {"prompt": rec["prompt"], "test": rec["test"], "entry_point": rec["entry_point"]}
    assert reward(f"Compare every pair.\n####\n{rec['answer']}", rec["answer"], kind="code", **kw) == 1.0
    assert reward("Give up.\n####\n    return False\n", rec["answer"], kind="code", **kw) == 0.0


# ---------------------------------------------------------------- bad rows are never silently dropped


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "Q1?", "answer": "#### 1"}\n\n{"question": "Q2?", "answer": \n')
    with pytest.raises(bm.BadRowsError, match=r"gsm8k\.jsonl line 3: not valid JSON"):
        load("gsm8k", path)
    bad_json = tmp_path / "gsm8k.json"
    bad_json.write_text('[{"question": "Q1?",\n "answer": }]')
    with pytest.raises(bm.BadRowsError, match=r"gsm8k\.json line 2: not valid JSON"):
        load("gsm8k", bad_json)


def test_rows_without_fields_or_not_objects_are_an_error_naming_count_and_first_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "Q1?", "answer": "#### 1"}),
        "",  # blank lines are not rows, but the line numbers still count them
        json.dumps({"question": "Q2?"}),          # no answer
        json.dumps(["not", "an", "object"]),
        json.dumps({"question": "Q3?", "answer": "#### 3"}),
    ]) + "\n")
    with pytest.raises(bm.BadRowsError, match=r"2 of 4 rows of .*gsm8k\.jsonl are unusable \(first: line 3, "
                                              r".*its keys: question\).*skip_bad_rows"):
        load("gsm8k", path)
    with pytest.warns(UserWarning, match=r"2 of 4 rows .*skipped"):
        recs = load("gsm8k", path, skip_bad_rows=True)
    assert [r["question"] for r in recs] == ["Q1?", "Q3?"]
    with pytest.raises(ConfigError, match="skip_bad_rows' must be true or false"):
        load("gsm8k", path, skip_bad_rows="yes")


def test_synthetic_rows_missing_a_field_are_an_error(tmp_path):
    (tmp_path / "synthetic").mkdir()
    write_jsonl(tmp_path / "synthetic" / "test_id.jsonl", [{"id": "a", "question": "Q?"}])  # no answer
    with pytest.raises(bm.BadRowsError, match=r"1 of 1 rows .*row 1, KeyError: 'answer'"):
        bm.load_benchmark("synthetic_test_id", data_root=tmp_path)


def test_cli_reports_a_bad_benchmark_file_in_one_line(tmp_path, capsys):
    from tarpo import cli
    from tarpo.io import BadInputError

    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Q1?", "answer": "#### 1"}\n{"question": "Q2?"}\n')
    config = json.dumps({"benchmarks": {"gsm8k_train": {"path": str(path)}}})
    assert cli.main(["prepare", "--config-json", config, "--dataset", "gsm8k_train", "--out", str(tmp_path / "o")]) == 4
    err = capsys.readouterr().err
    assert err.startswith("tarpo: bad input: benchmark 'gsm8k_train': 1 of 2 rows") and "line 2" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert issubclass(bm.BadRowsError, BadInputError)  # io's malformed-input error, which the CLI reports too
