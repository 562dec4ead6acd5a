"""evaluation/prompts.py on synthetic COCO-format and LAION caption files."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.prompts import (
    Prompt,
    coco_prompts,
    laion_prompts,
    main,
    read_manifest,
    reference_list_path,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def synthetic_coco(tmp_path: Path, n_images: int = 40, seed: int = 3) -> tuple[Path, Path, dict]:
    """instances + captions files with scattered image ids, the captions file listing images in
    another order than the instances file, annotations interleaved across images (not grouped),
    4-7 captions per image and one image without captions."""
    rng = random.Random(seed)
    ids = rng.sample(range(1, 600_000), n_images)
    images = [{"id": i, "file_name": f"COCO_val_{i:012d}.jpg"} for i in ids]
    anns = []
    for n, image_id in enumerate(ids[1:]):  # ids[0] gets no caption
        anns += [{"image_id": image_id, "caption": f"image {image_id} caption {k}"} for k in range(4 + n % 4)]
    rng.shuffle(anns)
    for ann_id, ann in enumerate(anns):
        ann["id"] = 1000 + ann_id
    instances = write_json(
        tmp_path / "instances.json", {"images": images, "annotations": [], "categories": []}
    )
    captions = write_json(tmp_path / "captions.json", {"images": images[::-1], "annotations": anns})
    return captions, instances, {"ids": ids, "anns": anns}


def pycocotools_order(instance_ids: list[int], anns: list[dict], count: int) -> tuple[list[int], list[dict]]:
    """The authors' selection restated with pycocotools' semantics: getImgIds() = images-array
    order; random.seed(42); random.shuffle; [:count]; getAnnIds(imgIds=...) concatenates each
    image's annotations (file order) in the order of the given ids; every 5th; [:count]."""
    ids = list(instance_ids)
    state = random.getstate()
    random.seed(42)
    random.shuffle(ids)
    random.setstate(state)
    ids = ids[:count]
    flat = [ann for image_id in ids for ann in anns if ann["image_id"] == image_id]
    return ids, [ann for idx, ann in enumerate(flat) if idx % 5 == 0][:count]


def test_coco_hand_example_follows_the_shuffled_image_order_and_every_fifth_caption(tmp_path):
    # random.seed(42); random.shuffle([30, 10, 20]) gives [10, 30, 20].
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in (30, 10, 20)]
    anns = [
        {"id": k, "image_id": image_id, "caption": f"{image_id}-{k}"}
        for k, image_id in enumerate([20, 30, 10] * 4)
    ]
    instances = write_json(tmp_path / "i.json", {"images": images})
    captions = write_json(tmp_path / "c.json", {"images": images, "annotations": anns})
    prompt_set = coco_prompts(captions, instances)
    # flat list: 10-2 10-5 10-8 10-11 | 30-1 30-4 30-7 30-10 | 20-0 20-3 20-6 20-9; positions 0, 5, 10
    assert [p.prompt for p in prompt_set.prompts] == ["10-2", "30-4", "20-6"]
    assert [p.image_id for p in prompt_set.prompts] == [10, 30, 20]
    assert prompt_set.references == ["10.jpg", "30.jpg", "20.jpg"]


def test_coco_selection_matches_pycocotools_semantics_not_annotation_file_order(tmp_path):
    captions, instances, data = synthetic_coco(tmp_path)
    count = 25  # fewer images than the file holds, and the every-5th list (about 27) is truncated
    ids, expected = pycocotools_order(data["ids"], data["anns"], count)
    prompt_set = coco_prompts(captions, instances, count=count)

    assert prompt_set.references == [f"COCO_val_{i:012d}.jpg" for i in ids]
    assert [p.prompt for p in prompt_set.prompts] == [ann["caption"] for ann in expected]
    assert len(prompt_set.prompts) == count
    # Filtering the annotation file in its own order would pick other captions.
    chosen = set(ids)
    file_order = [a for a in data["anns"] if a["image_id"] in chosen][::5][:count]
    assert [p.prompt for p in prompt_set.prompts] != [a["caption"] for a in file_order]


def test_coco_prompts_carry_index_seed_image_id_and_image_path(tmp_path):
    captions, instances, _ = synthetic_coco(tmp_path)
    prompt_set = coco_prompts(captions, instances, count=10, images_dir="val2014", base_seed=100)
    for i, p in enumerate(prompt_set.prompts):
        assert (p.index, p.seed) == (i, 100 + i)
        assert p.prompt.startswith(f"image {p.image_id} caption")
        assert p.reference == str(Path("val2014") / f"COCO_val_{p.image_id:012d}.jpg")
    assert len(prompt_set.references) == 10
    assert all(r.startswith("val2014") for r in prompt_set.references)


def test_coco_2017_sized_split_keeps_every_image_when_count_exceeds_it(tmp_path):
    """val2017 has 5,000 images, so count 10,000 keeps all of them and about 5,000 prompts."""
    captions, instances, data = synthetic_coco(tmp_path, n_images=12)
    prompt_set = coco_prompts(captions, instances)
    ids, expected = pycocotools_order(data["ids"], data["anns"], 10_000)
    assert sorted(ids) == sorted(data["ids"])
    assert prompt_set.references == [f"COCO_val_{i:012d}.jpg" for i in ids]
    assert len(prompt_set.prompts) == (len(data["anns"]) + 4) // 5
    assert [p.prompt for p in prompt_set.prompts] == [ann["caption"] for ann in expected]


def test_manifest_is_reproducible_and_reads_back(tmp_path):
    captions, instances, _ = synthetic_coco(tmp_path)
    first, first_refs = write_manifest(coco_prompts(captions, instances, count=20), tmp_path / "a.jsonl")
    second, second_refs = write_manifest(coco_prompts(captions, instances, count=20), tmp_path / "b.jsonl")
    assert first.read_bytes() == second.read_bytes()
    assert first_refs == tmp_path / "a.reference.txt"
    assert first_refs.read_text() == second_refs.read_text()
    assert read_manifest(first) == coco_prompts(captions, instances, count=20).prompts
    record = json.loads(first.read_text().splitlines()[0])
    assert list(record) == ["index", "prompt", "seed", "reference", "image_id"]


def test_existing_manifest_is_not_overwritten_without_force(tmp_path):
    captions, instances, _ = synthetic_coco(tmp_path)
    out = tmp_path / "m.jsonl"
    write_manifest(coco_prompts(captions, instances, count=5), out)
    before = out.read_text()
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        write_manifest(coco_prompts(captions, instances, count=8), out)
    assert out.read_text() == before
    write_manifest(coco_prompts(captions, instances, count=8), out, force=True)
    assert len(read_manifest(out)) == 8


def test_laion_txt_takes_the_first_captions_in_file_order(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a red car\n\nthe sea at night\r\n  \nan old map\n", encoding="utf-8")
    prompt_set = laion_prompts(path, count=2, base_seed=5)
    assert [(p.index, p.prompt, p.seed, p.reference) for p in prompt_set.prompts] == [
        (0, "a red car", 5, None),
        (1, "the sea at night", 6, None),
    ]
    assert prompt_set.references == []


def test_laion_sample_is_pandas_df_sample_with_the_seed(tmp_path):
    """pandas' df.sample(n, random_state=s) is RandomState(s).permutation(len)[:n]; the authors
    used s = 42 on their LAION parquet."""
    path = tmp_path / "captions.txt"
    path.write_text("".join(f"caption {k}\n" for k in range(300)), encoding="utf-8")
    prompt_set = laion_prompts(path, count=50, sample=True, base_seed=42)
    rows = np.random.RandomState(42).permutation(300)[:50]
    assert [p.prompt for p in prompt_set.prompts] == [f"caption {k}" for k in rows]
    assert [p.seed for p in prompt_set.prompts] == [42 + i for i in range(50)]
    assert laion_prompts(path, count=50, sample=True, base_seed=42) == prompt_set
    assert laion_prompts(path, count=50, sample=True, base_seed=1) != prompt_set


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_laion_table_reads_caption_and_image_columns(tmp_path, suffix, delimiter):
    path = tmp_path / f"laion{suffix}"
    rows = [["URL", "TEXT", "score"], ["img/0.jpg", "a cat, sleeping", "0.3"], ["", "a dog", "0.2"]]
    rows.append(["img/2.jpg", 'a "quoted" bird', "0.1"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    prompt_set = laion_prompts(path, images_dir="laion")
    assert [p.prompt for p in prompt_set.prompts] == ["a cat, sleeping", "a dog", 'a "quoted" bird']
    assert [p.reference for p in prompt_set.prompts] == [
        str(Path("laion/img/0.jpg")),
        None,
        str(Path("laion/img/2.jpg")),
    ]
    assert prompt_set.references == [str(Path("laion/img/0.jpg")), str(Path("laion/img/2.jpg"))]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_laion_parquet_without_pyarrow_says_what_to_install(tmp_path):
    path = tmp_path / "part-0.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="needs pyarrow: pip install pyarrow"):
        laion_prompts(path)


def test_laion_parquet_is_read_with_pyarrow(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"URL": ["http://x/0.jpg", "http://x/1.jpg"], "TEXT": ["one", "two"]}), path)
    prompt_set = laion_prompts(path)
    assert [(p.prompt, p.reference) for p in prompt_set.prompts] == [
        ("one", "http://x/0.jpg"),
        ("two", "http://x/1.jpg"),
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "c.json").write_text("{not json"), r"c\.json is not valid JSON"),
        (lambda d: write_json(d / "c.json", [1, 2]), r"top level is not an object"),
        (lambda d: write_json(d / "c.json", {"annotations": []}), r"c\.json has no 'images' array"),
        (
            lambda d: write_json(
                d / "c.json", {"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 1}]}
            ),
            r"annotations\[0\] lacks one of the fields image_id, caption",
        ),
        (
            lambda d: write_json(
                d / "c.json", {"images": [{"id": 2, "file_name": "2.jpg"}], "annotations": []}
            ),
            r"are not in the images of .*c\.json; pass the captions and instances files of the same split",
        ),
    ],
)
def test_malformed_coco_files_raise_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    instances = write_json(tmp_path / "i.json", {"images": [{"id": 1, "file_name": "1.jpg"}]})
    with pytest.raises(ValueError, match=message) as info:
        coco_prompts(tmp_path / "c.json", instances)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "c.csv",
            "url,title\nx.jpg,hi\n",
            r"has no caption column \(columns: url, title\); name one caption / text / prompt",
        ),
        ("c.csv", "caption,image\na cat\n", r"line 2 has 1 fields, the header 2"),
        ("c.csv", "caption,image\n,x.jpg\n", r"row 0 has no caption in column 'caption'"),
        ("c.csv", "", r"is empty; expected a header row"),
        ("c.txt", "\n\n", r"holds no captions"),
        ("c.json", "[]", r"unknown caption file type '\.json'"),
    ],
)
def test_malformed_caption_files_raise_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        laion_prompts(path)
    assert "\n" not in str(info.value)


def test_count_below_one_is_refused(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\n")
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        laion_prompts(path, count=0)


def test_cli_writes_manifest_and_reference_list_and_refuses_to_overwrite(tmp_path, capsys):
    captions, instances, _ = synthetic_coco(tmp_path)
    out = tmp_path / "coco.jsonl"
    argv = ["coco", "--captions", str(captions), "--instances", str(instances), "--out", str(out)]
    assert main([*argv, "--count", "12", "--seed", "7", "--images-dir", "imgs"]) == 0
    prompts = read_manifest(out)
    assert len(prompts) == 12 and prompts[0].seed == 7
    assert len(reference_list_path(out).read_text().splitlines()) == 12
    assert "12 prompts" in capsys.readouterr().out
    assert main(argv) == 2
    expected = f"python -m evaluation.prompts: error: {out} already exists; pass --force to overwrite it\n"
    assert capsys.readouterr().err == expected
    assert main([*argv, "--force"]) == 0
    assert len(read_manifest(out)) > 12


def test_cli_runs_as_a_module_for_laion(tmp_path):
    captions = tmp_path / "laion.txt"
    captions.write_text("".join(f"caption {k}\n" for k in range(20)), encoding="utf-8")
    out = tmp_path / "laion.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "evaluation.prompts",
        "laion",
        "--captions",
        str(captions),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [*cmd, "--count", "6", "--sample", "--seed", "42"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [p.prompt for p in read_manifest(out)] == [
        f"caption {k}" for k in np.random.RandomState(42).permutation(20)[:6]
    ]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2  # like every command of the project that refuses its input
    assert (
        again.stderr
        == f"python -m evaluation.prompts: error: {out} already exists; pass --force to overwrite it\n"
    )


def manifest_with(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"index": 0, "prompt": "a cat", "seed": 5, "reference": null}'


def test_read_manifest_skips_blank_lines_and_takes_an_optional_image_id(tmp_path):
    path = manifest_with(
        tmp_path, GOOD, "", '{"index": 3, "prompt": "a dog", "seed": 8, "reference": "d.jpg", "image_id": 42}'
    )
    assert read_manifest(path) == [Prompt(0, "a cat", 5, None), Prompt(3, "a dog", 8, "d.jpg", 42)]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "{not json",
            "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"index": 1, "prompt": "x"}', "no 'seed', 'reference'"),
        (
            '{"index": 1, "prompt": "x", "seed": 1, "reference": null, "url": "u"}',
            "unknown key 'url'; the keys are index, prompt, seed, reference, image_id",
        ),
        (
            '{"index": "1", "prompt": "x", "seed": 1, "reference": null}',
            "'index' must be an integer >= 0, got '1'",
        ),
        ('{"index": 1, "prompt": 7, "seed": 1, "reference": null}', "'prompt' must be a string, got 7"),
        (
            '{"index": 1, "prompt": "x", "seed": -1, "reference": null}',
            "'seed' must be an integer in [0, 2^63), got -1",
        ),
        (
            '{"index": 1, "prompt": "x", "seed": true, "reference": null}',
            "'seed' must be an integer in [0, 2^63), got True",
        ),
        (
            '{"index": 1, "prompt": "x", "seed": 1, "reference": 3}',
            "'reference' must be a path or null, got 3",
        ),
        (
            '{"index": 1, "prompt": "x", "seed": 1, "reference": null, "image_id": 1.5}',
            "'image_id' must be an integer or null, got 1.5",
        ),
        ('{"index": 0, "prompt": "x", "seed": 1, "reference": null}', "index 0 is already on line 1"),
    ],
)
def test_read_manifest_names_the_line_and_the_problem(tmp_path, line, problem):
    path = manifest_with(tmp_path, GOOD, line)
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    assert str(info.value) == f"{path} line 2 is not a manifest record ({problem}); rewrite it"


def test_read_manifest_refuses_a_missing_or_empty_file(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"cannot read the manifest .*nothing\.jsonl: No such file or directory; "
        r"write one with python -m evaluation.prompts",
    ):
        read_manifest(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match=r"m\.jsonl lists no prompts"):
        read_manifest(manifest_with(tmp_path, "", "  "))
