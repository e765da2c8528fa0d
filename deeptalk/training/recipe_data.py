"""A recipe's stage data: ASR pairs, spoken QA questions with self-distilled answers, text instructions."""
from __future__ import annotations

import random


def build_data(recipe: dict) -> dict:
    """Build (or reuse from the cache) the stage data sets of the recipe."""
    from deeptalk import data as D

    d = recipe["data"]
    seed = recipe["seed"]
    rng = random.Random(seed)
    questions = D.quiz_questions()
    rng.shuffle(questions)
    n_qa, n_asr, n_text = d["spoken_qa"], d["asr"], d["text"]
    qa_q = [q["question"] for q in questions[:n_qa]]
    prompts = D.instruction_prompts(seed)
    rng.shuffle(prompts)
    text_p = prompts[:n_text]

    from deeptalk_common.base_llm import load_base_llm

    answerer_name = d.get("answerer", "smollm2-135m-instruct")
    max_new = d.get("answer_max_new_tokens", 48)
    answerer_id = f"{answerer_name}|greedy|{max_new}|batch16"
    need = [p for p in qa_q + text_p]
    lazy = {}

    def answer(ps):
        if "fn" not in lazy:
            m, t = load_base_llm(answerer_name)
            lazy["fn"] = D.base_llm_answerer(m, t, max_new_tokens=max_new)
        return lazy["fn"](ps)

    answers = D.cached_answers(need, answer, answerer_id, desc="self-distilled answers")
    qa_a = [D.first_sentences(a, d.get("spoken_answer_max_words", 24)) for a in answers[:n_qa]]
    text_a = answers[n_qa:]
    # ASR sentences: questions not used for spoken QA, then answer sentences (natural text)
    asr_sents = [q["question"] for q in questions[n_qa:]][: n_asr // 2]
    asr_sents += [s for s in (D.first_sentences(a, 20) for a in answers) if s][: n_asr - len(asr_sents)]
    if d.get("asr_corpus"):  # more, and more varied, sentences to transcribe: the hearing corpus's
        from deeptalk.hearing_corpus import hearing_sentences

        asr_sents += hearing_sentences(int(d["asr_corpus"]), seed + 31)
    asr = D.build_asr_set(asr_sents, d["voices"], seed)
    repeat, lists = speaking_texts(recipe)
    statements, name_lists = name_texts(recipe)
    return {"asr": asr, "qa_questions": qa_q, "qa_answers": qa_a, "text": D.build_text_set(text_p, text_a),
            "answerer": answerer_id, "repeat_texts": repeat,
            "word_lists": lists, "name_statements": statements, "name_lists": name_lists}


def speaking_texts(recipe: dict) -> tuple[list[str], list[str]]:
    """The recipe's "repeat this sentence" texts and word lists for stage 2.1: sentences no
    evaluation text holds (the hearing corpus's sources)."""
    d, seed = recipe["data"], recipe["seed"]
    n_rep, n_lists = int(d.get("repeat", 0)), int(d.get("word_lists", 0))
    if not (n_rep or n_lists):
        return [], []
    from deeptalk.hearing_corpus import hearing_sentences, word_lists

    # one seeded order: the repeat sentences first, the lists' words from the sentences after them
    texts = hearing_sentences(n_rep + 4 * n_lists, seed + 21)
    lists = word_lists(texts[n_rep:], n_lists, 8, seed + 22) if n_lists else []
    return texts[:n_rep], lists


def name_texts(recipe: dict) -> tuple[list[str], list[str]]:
    """The recipe's name turns for stage 2.1: `data.name_statements` statements about WordNet people
    and places ("Aleppo is a city in northwestern Syria."), `data.name_lists` lists of
    `data.names_per_list` (6) of their names. No name an evaluation text holds is among them
    (hearing_corpus.proper_names); the speech learns to say names on names no task asks."""
    d, seed = recipe["data"], recipe["seed"]
    n_st, n_lists = int(d.get("name_statements", 0)), int(d.get("name_lists", 0))
    if not (n_st or n_lists):
        return [], []
    from deeptalk.hearing_corpus import CorpusError, name_lists, proper_names

    names = proper_names()
    statements = [st for _, st, _ in names if st]
    random.Random(seed + 25).shuffle(statements)
    if n_st > len(statements):
        raise CorpusError(f"data.name_statements: {n_st} asked, WordNet holds {len(statements)}")
    return statements[:n_st], name_lists([n for n, _, _ in names], n_lists, int(d.get("names_per_list", 6)), seed + 26)
