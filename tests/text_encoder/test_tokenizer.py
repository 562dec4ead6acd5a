"""The CLIP tokenizer gives exactly the ids of SD 1.5's reference tokenizer (transformers' pure-Python
CLIPTokenizer 4.57.6 with ftfy), row layout [bos, tokens, eos, pad...], 77 long."""

import hashlib
import random
import warnings

import pytest
import torch

from tests.reference.clip import clip_vocab, hf_slow_tokenizer, write_tokenizer_files
from text_encoder import Tokenizer
from text_encoder.tokenizer import VOCAB_GZ

BOS, EOS = 49406, 49407

HAND_WRITTEN = [
    # plain prompts, case, contractions
    "a photo of a cat",
    "A  Photo of an astronaut riding a horse on Mars.",
    "hello, world! 123",
    "don't",
    "I'M SURE THEY'LL SAY WE'VE DONE IT, SHE'D SAY IT'S FINE",
    "Don’t panic — it’s only a “test”",
    "masterpiece, best quality, (ultra-detailed:1.2), 8k uhd, dslr, film grain",
    "portrait of a woman by greg rutkowski, trending on artstation",
    "a RED Car On A bLuE rOaD",
    "CamelCaseWordsAndALLCAPS",
    # punctuation and symbols
    "hello!!! ??? ... !?!?",
    "a--b---c - d – e — f ‐ g ‒ h",
    "(parentheses) [brackets] {braces} <angle>",
    "@user #hashtag $100 50% a&b a*b a+b=c a/b a\\b a|b a~b a^b `code`",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "‘single’ “double” «guillemets» „low“ ‹angle›",
    "ellipsis… bullet • dagger † degree ° section § pilcrow ¶",
    "'quoted' \"double\" ''twice'' 's 't 're",
    # digits
    "1234567890",
    "3.14159 1,000,000 -42 +7 1e-5 0x1F",
    "2nd 3rd 4th 21st century 1990s",
    "½ ¼ ² ³ ١٢٣ ٣ Ⅻ ⅷ ① 𝟙",
    # accents, unicode letters, case oddities
    "café naïve façade résumé jalapeño",
    "Ångström Øresund Ærø straße",
    "İstanbul DİYARBAKIR",
    "ΣΊΣΥΦΟΣ ΟΔΥΣΣΕΥΣ σίσυφος",
    "Ǆ ǅ ǆ ﬁne ﬂower",
    "e\u0301te\u0301 (decomposed accents)",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "Привет, мир! Ёлка",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    # CJK
    "一只猫坐在月球上",
    "日本語のテキスト、カタカナ、ひらがな。",
    "한국어 문장입니다",
    "a cat 猫 and a dog 犬",
    # emoji
    "🐱 cat 🚀 rocket",
    "👩‍🚀 astronaut 👨‍👩‍👧‍👦 family",
    "🇺🇸 🇯🇵 flags",
    "❤️ ❤ ☀️ ✨✨✨",
    "😀😃😄😁😆😅😂🤣",
    # whitespace
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand\u000bvertical",
    "\u3000ideographic\u3000space",
    "no\u00a0break\u2009thin\u202fspace",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "many     spaces      between     words",
    "\n\n\n",
    # HTML entities and mojibake
    "Tom &amp; Jerry",
    "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &copy; &nbsp;",
    "<b>html</b> &amp; tags",
    "cafÃ© â€œquotedâ€\x9d Ã©tÃ©",
    # control characters
    "\x00null\x01\x1fcontrol\x7f",
    "\x1cfile\x1dgroup\x1erecord\x1funit",
    # empty
    "",
    "   ",
    # special tokens typed in a prompt
    "a <|endoftext|> b",
    "<|startoftext|>cat<|endoftext|>",
    "<|ENDOFTEXT|> upper",
    # repeated characters (BPE merge order)
    "aaaaaaaaaaaaaaaa",
    "hahahahahahaha lololol",
    "zzzzzzzzzz mmmmmmm eeeeeeee",
    "!!!!!!!!!!!!!!!!",
    # over-long prompts (truncation)
    "a photo of a cat, " * 20,
    " ".join(str(i) for i in range(60)),
    "一只猫" * 40,
    "highly detailed, " * 30 + "the end",
]

FRAGMENTS = [
    "cat",
    "Dog",
    "ASTRONAUT",
    "riding",
    "horse",
    "on",
    "mars",
    "photograph",
    "of",
    "the",
    "beautiful",
    "landscape",
    "oil",
    "painting",
    "4k",
    "HDR",
    "octane",
    "render",
    "unreal",
    "engine",
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "O'Neil",
    ",",
    ".",
    "!",
    "?",
    ":",
    ";",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "-",
    "--",
    "_",
    "/",
    "\\",
    "|",
    "'",
    '"',
    "`",
    "~",
    "@",
    "#",
    "$",
    "%",
    "^",
    "&",
    "*",
    "+",
    "=",
    "<",
    ">",
    "“",
    "”",
    "‘",
    "’",
    "—",
    "–",
    "…",
    "«",
    "»",
    "·",
    "•",
    "©",
    "®",
    "™",
    "°",
    "±",
    "×",
    "÷",
    "0",
    "7",
    "42",
    "1999",
    "3.5",
    "½",
    "²",
    "٣",
    "Ⅻ",
    "é",
    "ñ",
    "ü",
    "ø",
    "ß",
    "Ş",
    "İ",
    "Σ",
    "ω",
    "ж",
    "Ё",
    "ą",
    "ł",
    "ő",
    "ť",
    "猫",
    "月",
    "日本",
    "東京",
    "한국",
    "ひらがな",
    "カタカナ",
    "中文字符",
    "🐱",
    "🚀",
    "🌸",
    "👩‍🎨",
    "🇫🇷",
    "❤️",
    "🔥",
    "🙂",
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#39;",
    "&eacute;",
    "Ã©",
    "â€™",
    "ﬁ",
    "ｆｕｌｌ",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t", ", ", " \u00a0", "\u3000"]


def generated_prompts(n: int = 200, seed: int = 20240601) -> list[str]:
    """Random mixtures of the fragments above: 1-70 pieces (some prompts pass 75 tokens)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        pieces = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 70))]
        text = "".join(piece + rng.choice(SEPARATORS) for piece in pieces)
        prompts.append(text if rng.random() < 0.8 else text.upper())
    return prompts


PROMPTS = HAND_WRITTEN + generated_prompts()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return hf_slow_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_vendored_vocabulary_file_is_the_official_one():
    assert hashlib.sha256(VOCAB_GZ.read_bytes()).hexdigest() == (
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    )


def test_vocabulary_has_49408_entries_in_clip_order():
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert Tokenizer.sd1().bpe.get_vocab() == {t: i for i, t in enumerate(vocab)}


@pytest.mark.parametrize(
    "prompt, ids",
    [
        ("a photo of a cat", [BOS, 320, 1125, 539, 320, 2368, EOS]),
        (
            "A  Photo of an astronaut riding a horse on Mars.",
            [BOS, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 269, EOS],
        ),
        ("hello, world! 123", [BOS, 3306, 267, 1002, 256, 272, 273, 274, EOS]),
        ("don't", [BOS, 847, 713, EOS]),
    ],
)
def test_facts_vectors(prompt, ids):
    row = Tokenizer.sd1()(prompt)[0]
    assert row[: len(ids)].tolist() == ids
    assert (row[len(ids) :] == EOS).all()


def test_rows_are_bos_tokens_eos_then_padding():
    ids = Tokenizer.sd1()(["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS] and (ids[0, 7:] == EOS).all()
    assert ids[1, 0] == BOS and (ids[1, 1:] == EOS).all()  # SD1's unconditional prompt


def test_pad_id_zero_keeps_eos_and_pads_with_zeros():
    """SDXL's bigG tokenizer pads with 0 ('!'), so argmax finds the one eos."""
    ids = Tokenizer.sd1(pad_id=0)(["a photo of a cat"])[0]
    assert ids[:7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS] and (ids[7:] == 0).all()
    assert ids.argmax() == 6


def test_matches_reference_tokenizer_on_varied_prompts(reference):
    assert len(PROMPTS) >= 260
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    too_long = [p for p in PROMPTS if len(reference(p)["input_ids"]) > 77]
    assert len(too_long) >= 8  # the set exercises truncation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = Tokenizer.sd1()(PROMPTS)
    mismatched = [p for p, row, ref in zip(PROMPTS, ids.tolist(), expected, strict=True) if row != ref]
    assert not mismatched, f"{len(mismatched)} prompts differ, first: {mismatched[:3]!r}"
    assert len(caught) == len(too_long)  # one warning per truncated prompt


def test_from_diffusers_files_matches_vendored(tmp_path):
    tok = Tokenizer.from_files(*write_tokenizer_files(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(tok(PROMPTS), Tokenizer.sd1()(PROMPTS))


def test_truncation_keeps_bos_first_75_tokens_eos_and_warns_once():
    prompt = "a photo of a cat, " * 20  # 6 tokens per repeat: 120 tokens, 45 dropped
    with pytest.warns(UserWarning) as caught:
        ids = Tokenizer.sd1()(prompt)[0]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "45" in message and "120" in message and "a photo of a cat, a photo" in message
    assert len(message) < 160  # the prompt is shortened in the message
    assert ids[0] == BOS and ids[76] == EOS
    assert ids[1:76].tolist() == ([320, 1125, 539, 320, 2368, 267] * 13)[:75]


def test_75_tokens_fit_without_warning():
    prompt = "cat " * 75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = Tokenizer.sd1()(prompt)[0]
    assert (ids[1:76] == 2368).all() and ids[76] == EOS


def test_vocabulary_is_built_once():
    assert Tokenizer.sd1().bpe is Tokenizer.sd1(pad_id=0).bpe


@pytest.mark.parametrize("bad", [None, 3, ["ok", 5], b"bytes"])
def test_non_text_input_is_refused(bad):
    with pytest.raises(TypeError, match="string or a list of strings"):
        Tokenizer.sd1()(bad)


def test_empty_prompt_list_is_refused():
    with pytest.raises(ValueError, match="empty list"):
        Tokenizer.sd1()([])


def test_vocab_files_without_special_tokens_are_refused(tmp_path):
    vocab_json, merges_txt = write_tokenizer_files(tmp_path)
    vocab_json.write_text('{"a": 0, "b": 1, "ab": 2}', encoding="utf-8")
    merges_txt.write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a CLIP vocabulary"):
        Tokenizer.from_files(vocab_json, merges_txt)
