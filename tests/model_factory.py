"""A model folder that is not the embedded default, built offline: a tiny RoBERTa-style encoder with
a byte-level BPE tokenizer trained on the corpus (``<pad>`` is id 1, not 0), as users bring their own."""

from __future__ import annotations

from pathlib import Path

from refitd.core.datasets import load_bundled_corpus


def tiny_roberta(folder: Path, *, texts: list[str] | None = None) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    texts = texts or load_bundled_corpus()["text"].head(5000).tolist()
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(texts, vocab_size=2000, min_frequency=2, special_tokens=specials)
    from tokenizers.processors import RobertaProcessing

    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        cls_token="<s>", sep_token="</s>", model_max_length=512)
    assert tokenizer.pad_token_id == 1
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    return folder
