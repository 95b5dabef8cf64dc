"""Trains the small project tokenizer, `pg_jax/assets/pg_jax_small_tokenizer.model`.

It has PaliGemma's layout with fewer text pieces: pad 0, eos 1, bos 2, unk 3, "\\n" a single
piece, byte fallback (any text encodes), about 1000 text pieces, then `<loc0000>`..`<loc1023>`
and `<seg000>`..`<seg127>` at the END of the vocabulary, as in `paligemma_tokenizer.model`.

Training is deterministic (one thread, no input sampling), so rerunning this script reproduces the
committed file byte for byte on the same sentencepiece version.

Usage:
  python scripts/make_tokenizer.py [--out pg_jax/assets/pg_jax_small_tokenizer.model]
"""

import argparse
import io
import os
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pg_jax.data import synthetic  # noqa: E402

# Generic English so that arbitrary questions (real DocVQA, demos) still get sensible pieces.
_ENGLISH = """\
What is the name of the company mentioned in the letter? Who is the author of this report?
What is the date mentioned at the top of the page? Which year is shown in the table?
How many people attended the meeting? What is the title of the document? What is the address?
What percentage is given for the second quarter? To whom is this memo addressed?
What is the telephone number? What is the fax number? Where is the office located?
The results of the study show that the new method improves the quality of the product.
Please return the signed form to the research department before the end of the month.
The board of directors approved the budget for the next fiscal year at its annual meeting.
Total sales increased by ten percent compared with the previous year in all regions.
This page contains a summary of the tests and the data collected during the program.
Figure 1 shows the distribution of the samples by age group and by region of origin.
Dear Sir or Madam, thank you for your letter regarding the proposal for the new project.
Sincerely yours, Director of Marketing, Division of Sales and Public Relations.
answer en What is written on the form? caption en describe the image in detail.
question answer page document table figure chart graph report invoice receipt number amount
January February March April May June July August September October November December
Monday Tuesday Wednesday Thursday Friday Saturday Sunday morning afternoon evening
one two three four five six seven eight nine ten hundred thousand million billion
"""

NUM_TEXT_PIECES = 1000
NUM_LOC, NUM_SEG = 1024, 128


def train(out: str) -> int:
    """Trains the model, appends loc/seg tokens, writes `out`; returns the vocab size."""
    lines = _ENGLISH.splitlines() + synthetic.sample_texts(3000, seed=0)
    model = io.BytesIO()
    # 4 specials + "\n" + 256 byte pieces are part of vocab_size; the rest are text pieces.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=NUM_TEXT_PIECES + 4 + 1 + 256,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["\n"],
        byte_fallback=True,
        split_digits=True,  # As Gemma: numbers tokenize digit by digit.
        add_dummy_prefix=False,  # As Gemma: no leading space is inserted.
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    # User-defined symbols given to the trainer land right after the specials; PaliGemma has
    # them at the end, so they are appended to the trained model instead.
    for name in [f"<loc{i:04d}>" for i in range(NUM_LOC)] + [
        f"<seg{i:03d}>" for i in range(NUM_SEG)
    ]:
        piece = proto.pieces.add()
        piece.piece = name
        piece.score = 0.0
        piece.type = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(proto.SerializeToString())
    return len(proto.pieces)


def main() -> None:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", default=os.path.join(root, "pg_jax/assets/pg_jax_small_tokenizer.model")
    )
    a = p.parse_args()
    n = train(a.out)
    print(f"wrote {a.out}: {n} pieces")


if __name__ == "__main__":
    main()
