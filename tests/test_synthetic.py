from seq2seq.config import DataConfig
from seq2seq.data import open_corpus


def read(task, split, **kw):
    return open_corpus(DataConfig(corpus=task, **kw)).read(split)[0]


def test_tasks_are_what_they_say():
    for task, fn in (("copy", lambda s: s), ("reverse", lambda s: s[::-1]), ("sort", lambda s: sorted(s, key=int))):
        pairs = read(task, "train", synthetic_train_size=200, synthetic_min_len=2, synthetic_max_len=9,
                     synthetic_symbols=15)
        assert len(pairs) == 200
        for src, tgt in pairs:
            tokens = src.split()
            assert 2 <= len(tokens) <= 9 and all(0 <= int(t) < 15 for t in tokens)
            assert tgt.split() == fn(tokens)


def test_generated_by_seed():
    assert read("reverse", "test", synthetic_seed=7) == read("reverse", "test", synthetic_seed=7)
    assert read("reverse", "test", synthetic_seed=7) != read("reverse", "test", synthetic_seed=8)
    assert read("reverse", "test") != read("reverse", "val")
    lengths = {len(s.split()) for s, _ in read("copy", "val", synthetic_min_len=20, synthetic_max_len=30)}
    assert min(lengths) >= 20 and max(lengths) <= 30 and len(lengths) > 5
