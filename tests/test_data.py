"""Prompt loading (line-numbered DataErrors), the held-out split, and the resumable sampler."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyshift.data import DataError, PromptSampler, load_prompts, split_fixed_prompts


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_prompts(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- formats -----------------------------------------------------------------------------------------


def test_jsonl(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "the cat"}\n\n{"prompt": "a dog", "id": 2}\n')
    assert load_prompts(path) == ["the cat", "a dog"]  # blank lines are skipped


def test_jsonl_other_field_and_bare_strings(tmp_path):
    assert load_prompts(write(tmp_path / "q.jsonl", '{"query": "x y"}\n"just text"\n'), field="query") == ["x y", "just text"]


def test_txt_one_prompt_per_line(tmp_path):
    assert load_prompts(write(tmp_path / "p.txt", "the cat\n\n  a dog sits\nlast")) == ["the cat", "  a dog sits", "last"]


def test_json_list_and_object_with_the_field(tmp_path):
    assert load_prompts(write(tmp_path / "a.json", '[{"prompt": "x"}, "y"]')) == ["x", "y"]
    assert load_prompts(write(tmp_path / "b.json", '{"prompt": ["x", "y"]}')) == ["x", "y"]
    assert error_of(write(tmp_path / "c.json", '{"other": 1}')) == f"{tmp_path / 'c.json'}: expected a JSON list of prompts"
    assert error_of(write(tmp_path / "d.json", '[\n{"prompt": "x"},\n{"prompt": }\n]')).startswith(f"{tmp_path / 'd.json'}:3: malformed JSON")
    assert error_of(write(tmp_path / "e.json", '["x", {"q": "y"}]')).startswith(f"{tmp_path / 'e.json'}[1]: no 'prompt' field")


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache inside the test's tmp dir."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_csv_through_datasets(tmp_path, datasets_cache):
    path = write(tmp_path / "p.csv", "prompt,label\nthe cat,1\na dog,0\n")
    assert load_prompts(path) == ["the cat", "a dog"]
    assert "no 'text' column (columns: prompt, label); set data.prompt_field" in error_of(path, field="text")


def test_directory_of_data_files(tmp_path, datasets_cache):
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir" / "part.jsonl", '{"prompt": "x"}\n{"prompt": "y"}\n')
    assert sorted(load_prompts(str(tmp_path / "dir"))) == ["x", "y"]


def test_suffix_case_does_not_change_the_format(tmp_path):
    assert load_prompts(write(tmp_path / "P.JSONL", '{"prompt": "x"}\n')) == ["x"]


def test_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"prompt": "x"}\n'.encode("utf-8"))
    (tmp_path / "bom.txt").write_bytes("\ufeffx\n".encode("utf-8"))
    assert load_prompts(str(tmp_path / "bom.jsonl")) == ["x"]
    assert load_prompts(str(tmp_path / "bom.txt")) == ["x"]


def test_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "p.jsonl", '{"prompt": "x"}\n')
    assert load_prompts("~/p.jsonl") == ["x"]


def test_empty_source_is_not_the_working_directory():
    assert error_of("") == "no prompt source given (data.prompts is empty)"


# ---- errors ------------------------------------------------------------------------------------------


def test_malformed_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n{"prompt": "d"}\n')
    assert error_of(path) == f"{path}:3: malformed JSON (Expecting ',' delimiter)"


def test_missing_field_names_the_field_and_the_setting(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"text": "b", "id": 1}\n')
    assert error_of(path) == f"{path}:2: no 'prompt' field (fields: text, id); set data.prompt_field"


def test_empty_prompt_names_its_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "   "}\n')
    assert error_of(path) == f"{path}:2: empty prompt"
    assert error_of(write(tmp_path / "q.jsonl", '{"prompt": ""}\n')) == f"{tmp_path / 'q.jsonl'}:1: empty prompt"


def test_wrong_types_name_their_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": 3}\n')
    assert error_of(path) == f"{path}:2: 'prompt' must be a string, got int"
    path = write(tmp_path / "q.jsonl", "[1, 2]\n")
    assert error_of(path) == f"{path}:1: expected an object with a 'prompt' field or a string, got list"


def test_empty_file_has_no_prompts(tmp_path):
    for name in ("e.jsonl", "e.txt", "e.json"):
        path = write(tmp_path / name, "[]" if name.endswith(".json") else "\n\n")
        assert error_of(path) == f"no prompts in {path}"


def test_missing_files(tmp_path):
    for name in ("nope.jsonl", "nope.txt", "nope.json", "nope.csv", "nope.parquet"):
        assert error_of(str(tmp_path / name)) == f"prompt file not found: {tmp_path / name}"


def test_not_utf8(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(b'{"prompt": "\xff\xfe"}\n')
    assert error_of(str(tmp_path / "b.jsonl")) == f"{tmp_path / 'b.jsonl'}: not a UTF-8 text file"


def test_json_limits_are_data_errors(tmp_path):
    deep = write(tmp_path / "deep.jsonl", '{"prompt": "a"}\n' + "[" * 100_000 + "\n")
    assert error_of(deep) == f"{deep}:2: malformed JSON (nested too deeply)"
    big = write(tmp_path / "big.jsonl", '{"prompt": "a", "n": ' + "9" * 5000 + "}\n")
    assert error_of(big).startswith(f"{big}:1: malformed JSON (Exceeds the limit")


def test_field_names_with_newlines_stay_on_one_line(tmp_path):
    path = write(tmp_path / "p.jsonl", json.dumps({"a\nb": "x"}) + "\n")
    assert error_of(path) == f"{path}:1: no 'prompt' field (fields: a b); set data.prompt_field"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(max_size=30), st.builds(lambda s: json.dumps({"prompt": s}), st.text(max_size=10)),
                                st.sampled_from(['{"prompt": 1}', "[", "null", '"x"', '{"prompt": "  "}', "NaN", "{}", "[" * 5000,
                                                 '{"prompt": "a", "n": ' + "9" * 5000 + "}", '\ufeff{"prompt": "x"}'])), max_size=6))
def test_jsonl_fuzz_gives_prompts_or_a_data_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        prompts = load_prompts(str(path))
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=6))
def test_jsonl_round_trips_any_prompt_text(tmp_path, texts):
    """Unicode line separators (\u2028, \x85) inside a JSON string must not split a record."""
    path = tmp_path / "round.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert load_prompts(str(path)) == texts


# ---- held-out split ----------------------------------------------------------------------------------

PROMPTS = [f"prompt {i}" for i in range(20)]


def test_split_is_deterministic_disjoint_and_complete():
    train, fixed = split_fixed_prompts(PROMPTS, 5, seed=3)
    assert (train, fixed) == split_fixed_prompts(PROMPTS, 5, seed=3)
    assert len(fixed) == 5 and len(train) == 15
    assert not set(train) & set(fixed)
    assert sorted(train + fixed) == sorted(PROMPTS)
    assert fixed == sorted(fixed, key=PROMPTS.index)  # held-out prompts keep the file's order
    assert split_fixed_prompts(PROMPTS, 5, seed=4)[1] != fixed  # the seed picks them


def test_split_zero_holds_nothing_out():
    assert split_fixed_prompts(PROMPTS, 0, seed=0) == (PROMPTS, [])


def test_split_too_many():
    with pytest.raises(DataError, match=r"analysis.num_prompts \(20\) must be smaller than the number of distinct prompts \(20\)"):
        split_fixed_prompts(PROMPTS, 20, seed=0)
    with pytest.raises(DataError, match="analysis.num_prompts must be >= 0"):
        split_fixed_prompts(PROMPTS, -1, seed=0)


def test_split_never_trains_on_a_copy_of_a_held_out_prompt():
    prompts = ["a", "b", "a", "c", "a", "d"]
    for seed in range(10):
        train, fixed = split_fixed_prompts(prompts, 2, seed)
        assert len(fixed) == 2 and len(set(fixed)) == 2
        assert not set(train) & set(fixed)
        assert set(train) | set(fixed) == set(prompts)


# ---- sampler -----------------------------------------------------------------------------------------


def take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def test_sampler_covers_each_epoch_and_reshuffles():
    sampler = PromptSampler(PROMPTS, batch_size=5, seed=0)
    epoch0, epoch1 = sum(take(sampler, 4), []), sum(take(sampler, 4), [])
    assert sorted(epoch0) == sorted(PROMPTS) == sorted(epoch1)
    assert epoch0 != epoch1 and epoch0 != PROMPTS
    assert sampler.state_dict() == {"epoch": 1, "index": 20}


def test_sampler_is_deterministic_and_seeded():
    assert take(PromptSampler(PROMPTS, 3, seed=7), 10) == take(PromptSampler(PROMPTS, 3, seed=7), 10)
    assert take(PromptSampler(PROMPTS, 3, seed=7), 10) != take(PromptSampler(PROMPTS, 3, seed=8), 10)


def test_sampler_without_shuffle_keeps_order_and_batches_cross_epochs():
    sampler = PromptSampler(["a", "b", "c"], batch_size=2, seed=0, shuffle=False)
    assert take(sampler, 3) == [["a", "b"], ["c", "a"], ["b", "c"]]


def test_sampler_state_dict_continues_the_exact_stream():
    reference = PromptSampler(PROMPTS, 7, seed=1)
    expected = take(reference, 9)
    for cut in (0, 2, 3, 5):  # 3 batches = 21 prompts: the cut falls inside epoch 1
        first = PromptSampler(PROMPTS, 7, seed=1)
        head = take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
        resumed = PromptSampler(PROMPTS, 7, seed=1)
        resumed.load_state_dict(state)
        assert head + take(resumed, 9 - cut) == expected


def test_sampler_refuses_no_prompts():
    with pytest.raises(DataError, match="no prompts"):
        PromptSampler([], 2, seed=0)
