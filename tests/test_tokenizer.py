import sys

from pg_jax.pp.tokenizer import Tokenizer, get_default_tokenizer_path


def test_special_ids_and_layout():
    tok = Tokenizer(get_default_tokenizer_path())
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.id_to_piece(3) == "<unk>"
    assert tok.encode("\n") == [tok.newline_id]
    # loc/seg tokens sit at the end of the vocabulary, as in paligemma_tokenizer.model.
    assert tok.piece_to_id("<loc0000>") == tok.vocab_size - 1152
    assert tok.id_to_piece(tok.vocab_size - 1) == "<seg127>"
    assert tok.vocab_size == 2413


def test_roundtrip_and_eos_stop():
    tok = Tokenizer()
    for s in ["What is the total?", "$1,204.50", "héllo 日本", "<loc0012><seg003>"]:
        assert tok.decode(tok.encode(s)) == s
    ids = tok.encode("K42")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("junk")) == "K42"
    assert tok.encode("<loc0012>") == [tok.piece_to_id("<loc0012>")]


def test_no_tensorflow_import():
    # The GPU machine has no TensorFlow: the tokenizer module must not pull it in.
    import subprocess

    code = "import sys, pg_jax.pp.tokenizer as t; t.Tokenizer(); print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=__file__.rsplit("/tests/", 1)[0],
        check=True,
    )
    assert out.stdout.strip() == "False"
