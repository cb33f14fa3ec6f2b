import pytest

from seq2seq.config import DataConfig
from seq2seq.data import BOS, EOS, PAD, UNK, PairTokenizer, load_dataset
from seq2seq.data.tokenizers import SentencePieceTokenizer, WordTokenizer


@pytest.fixture(scope="module")
def multi30k(shared_data):
    return load_dataset(DataConfig(corpus="multi30k", src="de", tgt="en", data_dir=str(shared_data)),
                        splits=["train", "val"])


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip_is_lossless_on_multi30k_val(multi30k, model_type, tmp_path):
    cfg = DataConfig(sp_model_type=model_type, vocab_size=4000, joint_vocab=(model_type == "bpe"))
    tok = PairTokenizer.train(multi30k.splits["train"], cfg)
    assert tok.joint == (model_type == "bpe")
    for side, index in ((tok.src, 0), (tok.tgt, 1)):
        assert side.vocab_size == 4000
        for pair in multi30k.splits["val"]:
            ids = side.encode(pair[index])
            assert min(ids) > EOS
            assert side.decode(ids) == pair[index]
    # Cased, punctuated output, as sacreBLEU wants it.
    assert tok.tgt.decode(tok.tgt.encode("A man, in BLUE.")) == "A man, in BLUE."
    # Characters never seen in training still round-trip (byte fallback), never <unk>.
    assert tok.src.decode(tok.src.encode("Ωμέγα ☃ 東京")) == "Ωμέγα ☃ 東京"
    tok.save(tmp_path)
    loaded = PairTokenizer.load(tmp_path)
    again = PairTokenizer.from_state(tok.state())
    sentence = multi30k.splits["val"][0][0]
    assert loaded.src.encode(sentence) == again.src.encode(sentence) == tok.src.encode(sentence)
    assert loaded.joint == tok.joint


def test_special_ids_are_fixed():
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    sentences = [f"the cat number {i} sat on the mat ." for i in range(300)]
    sp = SentencePieceTokenizer.train(sentences, vocab_size=300)
    assert [sp.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    word = WordTokenizer.train(sentences)
    assert word.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert sp.decode([BOS] + sp.encode("the cat sat") + [EOS, PAD, PAD]) == "the cat sat"
    assert word.decode([BOS] + word.encode("the cat sat") + [EOS, PAD, PAD]) == "the cat sat"


def test_word_tokenizer_round_trip_min_freq_and_unknowns():
    train = ["A man, in blue.", "A man's dog.", "Two men: in red!", "A man."]
    tok = WordTokenizer.train(train, min_freq=1)
    for s in train:
        assert tok.decode(tok.encode(s)) == s
    assert tok.split("A man, in") == ["\u2581A", "\u2581man", ",", "\u2581in"]
    frequent = WordTokenizer.train(train, min_freq=2)
    assert set(frequent.tokens[4:]) == {"\u2581A", "\u2581man", ".", "\u2581in"}
    assert frequent.encode("A dog.") == [frequent.index["\u2581A"], UNK, frequent.index["."]]
    assert frequent.decode(frequent.encode("A dog.")) == "A <unk>."
    capped = WordTokenizer.train(train, min_freq=1, max_size=6)
    assert capped.vocab_size == 6 and capped.tokens[4:] == [".", "\u2581A"]  # count, then text


def test_bad_tokenizer_folder_is_reported(tmp_path):
    from seq2seq.data import DataError

    with pytest.raises(DataError, match="tokenizer.json"):
        PairTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"joint": {"kind": "sentencepiece", "model": "joint.model"}')
    with pytest.raises(DataError, match=r"tokenizer\.json:1: malformed JSON"):
        PairTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"joint": {"kind": "sentencepiece", "model": "joint.model"}}')
    with pytest.raises(DataError, match=r"joint\.model.*missing"):
        PairTokenizer.load(tmp_path)
