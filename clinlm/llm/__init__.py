"""The fine-tuning engine every LLM method (sft, head, vlm) shares.

    builders.py  params section -> library object (BitsAndBytesConfig, LoraConfig, TrainingArguments)
    load.py      load_model: base -> bnb/dtype/device -> kbit preparation -> LoRA or saved adapter
    fit.py       fit: Trainer/SFTTrainer, loss normalisation, dvclive, save, train_info
    precision.py auto precision: bf16 where the machine computes it fast, else fp32
    project.py   the answer-position projection (training loss and scoring logits)
    scorer.py    Scorer: batched single-pass prompt scoring, prefix KV cache
    numeric.py   exact distribution over integer answers (ages) from digit tokens

A method keeps only what differs: its dataset, its loss, how it reads the answer.
"""
