import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from seq2seq.metrics import (
    lcs_length, lead_texts, levenshtein, summarization_markdown, summarization_scores,
    transliteration_markdown, transliteration_scores,
)
from seq2seq.plots import plot_accuracy_by_length, plot_rouge_by_length

# Three names, worked out by hand:
#   "ANA" vs "ANNA": one deletion; LCS 3, P 3/3, R 3/4, F 6/7; wrong
#   "MICHAEL": only the second reference matches; distance 0 to a 7-letter reference; F 1
#   "XYZ" vs "ABC": three substitutions; LCS 0, F 0; wrong
SRCS = ["anna", "mikhail", "alexandrovich"]  # 4, 7, 13 characters
HYPS = ["ANA", "MICHAEL", "XYZ"]
REFS = [["ANNA"], ["MIKHAIL", "MICHAEL"], ["ABC"]]
NBEST = [["ANA", "ANNA"], ["MICHAEL"], ["X", "Y", "Z", "W", "V", "ABC"]]  # first correct at 2, 1, 6


def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_lcs_hand_values():
    # ABCBDAB / BDCABA: e.g. B-C-B-A, and no common subsequence of 5
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert lcs_length("KATRINA", "CATHERINE") == 5  # A-T-R-I-N
    assert lcs_length("abc", "") == 0


def test_transliteration_hand_example():
    s = transliteration_scores(HYPS, REFS, SRCS, nbest=NBEST)
    assert s["sentences"] == 3
    assert s["word_accuracy"] == pytest.approx(1 / 3)
    assert s["cer"] == pytest.approx((1 + 0 + 3) / (4 + 7 + 3))
    assert s["mean_f"] == pytest.approx((6 / 7 + 1 + 0) / 3)
    assert s["accuracy_at_5"] == pytest.approx(2 / 3)
    assert s["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 6) / 3)  # rank 6 is past @5 but still counts
    assert s["by_length"] == [
        {"bucket": "1-4", "names": 1, "word_accuracy": 0.0, "cer": 0.25},
        {"bucket": "5-8", "names": 1, "word_accuracy": 1.0, "cer": 0.0},
        {"bucket": "13-16", "names": 1, "word_accuracy": 0.0, "cer": 1.0},
    ]


def test_transliteration_without_nbest_has_no_nbest_keys():
    s = transliteration_scores(HYPS, REFS, SRCS)
    assert set(s) == {"sentences", "word_accuracy", "cer", "mean_f", "by_length"}


def test_news_f_worked_example():
    # LCS(KATRINA, CATHERINE) = 5: P = 5/7, R = 5/9, F = 2PR/(P+R) = 0.625
    s = transliteration_scores(["KATRINA"], [["CATHERINE"]], ["katrina"])
    assert s["mean_f"] == pytest.approx(0.625)
    assert s["cer"] == pytest.approx(levenshtein("KATRINA", "CATHERINE") / 9)


def test_news_f_picks_reference_by_insertion_deletion_distance():
    # Levenshtein ties XY and ABCD at 2; NEWS's distance |c|+|r|-2 LCS gives XY 4 and ABCD 2,
    # so F uses ABCD: LCS 2, P 1, R 1/2, F 2/3 (it would be 0 against XY).
    s = transliteration_scores(["AB"], [["XY", "ABCD"]], ["ab"])
    assert s["mean_f"] == pytest.approx(2 / 3)


def test_cer_ties_go_to_the_shorter_reference():
    # AB is 2 edits from both ABXY and Z; the shorter Z makes CER 2/1, not 2/4
    s = transliteration_scores(["AB"], [["ABXY", "Z"]], ["ab"])
    assert s["cer"] == pytest.approx(2.0)


def test_empty_hypothesis_scores_zero_f_and_full_cer():
    s = transliteration_scores([""], [["ANNA"]], ["anna"])
    assert s["mean_f"] == 0.0
    assert s["cer"] == 1.0
    assert s["word_accuracy"] == 0.0


def test_accuracy_at_5_stops_at_five():
    refs = [["A"]]
    assert transliteration_scores(["X"], refs, ["a"], nbest=[["1", "2", "3", "4", "A"]])["accuracy_at_5"] == 1.0
    s = transliteration_scores(["X"], refs, ["a"], nbest=[["1", "2", "3", "4", "5", "A"]])
    assert s["accuracy_at_5"] == 0.0
    assert s["mrr"] == pytest.approx(1 / 6)


def test_name_length_buckets_in_order_and_21_plus():
    srcs = ["x" * 25, "x" * 4, "x" * 5, "x" * 20]
    s = transliteration_scores(["A"] * 4, [["A"]] * 4, srcs)
    assert [(b["bucket"], b["names"]) for b in s["by_length"]] == [("1-4", 1), ("5-8", 1), ("17-20", 1), ("21+", 1)]


def test_transliteration_errors():
    with pytest.raises(ValueError, match="3 sources, 2 hypotheses and 3 references"):
        transliteration_scores(HYPS[:2], REFS, SRCS)
    with pytest.raises(ValueError, match=r"refs\[1\] is empty"):
        transliteration_scores(HYPS, [["ANNA"], [], ["ABC"]], SRCS)
    with pytest.raises(ValueError, match=r"refs\[0\] is the string 'ANNA'"):
        transliteration_scores(HYPS, ["ANNA", ["MICHAEL"], ["ABC"]], SRCS)
    with pytest.raises(ValueError, match=r"refs\[2\] contains an empty reference"):
        transliteration_scores(HYPS, [["ANNA"], ["MICHAEL"], ["ABC", ""]], SRCS)
    with pytest.raises(ValueError, match="3 sources but 2 n-best lists"):
        transliteration_scores(HYPS, REFS, SRCS, nbest=NBEST[:2])
    with pytest.raises(ValueError, match=r"nbest\[2\] is empty"):
        transliteration_scores(HYPS, REFS, SRCS, nbest=[["ANA"], ["MICHAEL"], []])
    with pytest.raises(ValueError, match="no sources to score"):
        transliteration_scores([], [], [])


def test_transliteration_markdown():
    md = transliteration_markdown(transliteration_scores(HYPS, REFS, SRCS, nbest=NBEST))
    assert "| 3 | 0.333 | 0.286 | 0.619 | 0.667 | 0.556 |" in md
    assert "| 13-16 | 1 | 0.000 | 1.000 |" in md
    assert "acc@5" not in transliteration_markdown(transliteration_scores(HYPS, REFS, SRCS))


def test_rouge_hand_example():
    # hyp: the cat sat; ref: the cat ran away
    # ROUGE-1: 2 shared unigrams, P 2/3, R 2/4 -> F1 4/7; ROUGE-2: 1 shared bigram (the cat),
    # P 1/2, R 1/3 -> F1 2/5; ROUGE-L: LCS "the cat" -> same as ROUGE-1
    s = summarization_scores(["the cat sat"], ["the cat ran away"], ["the cat ran away from the dog"])
    assert s["rouge1"] == pytest.approx(4 / 7)
    assert s["rouge2"] == pytest.approx(2 / 5)
    assert s["rougeL"] == pytest.approx(4 / 7)


SUM_HYPS = ["Police arrest two men after a break-in.", "Storm closes schools across the region",
            "The council approved a new budget."]
SUM_REFS = ["Two men arrested after shop break-in", "Schools shut as storm hits region",
            "Council backs budget with tax rise"]
SUM_SRCS = ["Two men were arrested on Sunday after a break-in at a shop in the town centre, police said.",
            "A storm forced schools across the region to close on Monday as winds reached 80 mph.",
            "The council voted on Tuesday to approve a budget that includes a rise in council tax."]


def test_rouge_matches_rouge_score_api_directly():
    s = summarization_scores(SUM_HYPS, SUM_REFS, SUM_SRCS)
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, h) for h, r in zip(SUM_HYPS, SUM_REFS)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert s[key] == pytest.approx(sum(d[key].fmeasure for d in direct) / 3)
    assert 0 < s["rouge2"] < s["rouge1"] < 1
    assert s["bleu"] == pytest.approx(BLEU().corpus_score(SUM_HYPS, [SUM_REFS]).score)
    assert s["bleu_signature"].startswith("nrefs:1|")


def test_bleu_of_identical_summaries_is_100():
    refs = ["the quick brown fox jumps over", "a slow green turtle walks under"]
    s = summarization_scores(refs, refs, ["x"] * 2)
    assert s["bleu"] == pytest.approx(100.0)
    assert s["rouge1"] == s["rouge2"] == s["rougeL"] == pytest.approx(1.0)


def test_length_statistics():
    s = summarization_scores(["a b", "c"], ["a b c d", "e f"], ["w w w", "w"])
    assert s["hyp_words_mean"] == 1.5
    assert s["ref_words_mean"] == 3.0
    assert s["src_words_mean"] == 2.0
    assert s["length_ratio"] == pytest.approx(3 / 6)
    assert s["sentences"] == 2


def test_lead_baseline_words_and_text():
    # references of 3 and 2 words: mean 2.5, which rounds up to 3 (not to even, 2)
    refs = ["one two three", "x y"]
    srcs = ["one two three four five", "alpha beta gamma delta"]
    assert lead_texts(srcs, 3) == ["one two three", "alpha beta gamma"]
    s = summarization_scores(["four five", "alpha"], refs, srcs)
    lead = s["lead"]
    assert lead["words"] == 3
    # the lead of the first text is exactly its reference, the second shares nothing with its own
    assert lead["rouge1"] == pytest.approx((1.0 + 0.0) / 2)
    assert lead["rouge2"] == pytest.approx((1.0 + 0.0) / 2)
    assert lead["rougeL"] == pytest.approx((1.0 + 0.0) / 2)
    assert lead["bleu"] == pytest.approx(BLEU().corpus_score(["one two three", "alpha beta gamma"], [refs]).score)


def test_lead_baseline_takes_at_least_one_word():
    assert summarization_scores(["a"], ["b"], ["c d e"])["lead"]["words"] == 1
    assert lead_texts(["  c   d e "], 2) == ["c d"]


def test_text_length_buckets():
    srcs = ["w " * 130, "w " * 5, "w " * 25, "w " * 21]
    hyps = ["the cat", "the cat", "a dog", "x"]
    refs = ["the cat", "the dog", "a dog", "y"]
    s = summarization_scores(hyps, refs, srcs)
    assert [(b["bucket"], b["texts"]) for b in s["by_length"]] == [("1-20", 1), ("21-40", 2), ("121+", 1)]
    model = {b["bucket"]: b["rougeL"] for b in s["by_length"]}
    assert model["121+"] == pytest.approx(1.0)
    assert model["1-20"] == pytest.approx(0.5)  # the cat / the dog: LCS 1 of 2 and 2
    assert model["21-40"] == pytest.approx((1.0 + 0.0) / 2)
    assert all(b["lead_rougeL"] == 0.0 for b in s["by_length"])  # leads are all "w ..."


def test_summarization_errors():
    with pytest.raises(ValueError, match="3 sources, 3 hypotheses and 2 references"):
        summarization_scores(SUM_HYPS, SUM_REFS[:2], SUM_SRCS)
    with pytest.raises(ValueError, match=r"refs\[1\] is empty"):
        summarization_scores(SUM_HYPS, [SUM_REFS[0], "  ", SUM_REFS[2]], SUM_SRCS)
    with pytest.raises(ValueError, match=r"refs\[0\] is a list"):
        summarization_scores(SUM_HYPS, [[SUM_REFS[0]], SUM_REFS[1], SUM_REFS[2]], SUM_SRCS)
    with pytest.raises(ValueError, match="no sources to score"):
        summarization_scores([], [], [])


def test_summarization_markdown_shows_model_and_lead():
    s = summarization_scores(SUM_HYPS, SUM_REFS, SUM_SRCS)
    md = summarization_markdown(s)
    assert f"| model | {s['rouge1'] * 100:.2f} | {s['rouge2'] * 100:.2f} | {s['rougeL'] * 100:.2f} | {s['bleu']:.2f} |" in md
    assert f"| lead-{s['lead']['words']} baseline | {s['lead']['rouge1'] * 100:.2f} |" in md
    b = s["by_length"][0]
    assert f"| {b['bucket']} | 3 | {b['rougeL'] * 100:.2f} | {b['lead_rougeL'] * 100:.2f} | " \
           f"{(b['rougeL'] - b['lead_rougeL']) * 100:+.2f} |" in md
    assert s["bleu_signature"] in md


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    names = transliteration_scores(HYPS, REFS, SRCS)["by_length"]
    path = plot_accuracy_by_length(names, tmp_path / "sub" / "acc.png", title="names")
    assert path == tmp_path / "sub" / "acc.png" and _is_png(path)
    texts = summarization_scores(SUM_HYPS, SUM_REFS, SUM_SRCS)["by_length"]
    path = plot_rouge_by_length(texts, tmp_path / "rouge.png")
    assert path == tmp_path / "rouge.png" and _is_png(path)


def test_plots_refuse_empty_buckets(tmp_path):
    with pytest.raises(ValueError, match="by_length is empty"):
        plot_accuracy_by_length([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="by_length is empty"):
        plot_rouge_by_length([], tmp_path / "b.png")
    assert not list(tmp_path.iterdir())
