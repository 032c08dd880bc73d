"""The reasoner prompt of paper section 3.2: a system prompt and a user template around the context C.

Example:
    >>> from rgalign.features.prompt import ReasonerPrompt
    >>> msgs = ReasonerPrompt().messages("User Gender: Female")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
"""
from __future__ import annotations

from dataclasses import dataclass

SYSTEM_PROMPT = ("You are a helpful AI assistant. You first think about the reasoning process in the mind and "
                 "then provide the user with the answer.")
USER_TEMPLATE = (
    "You are an intelligent assistant supporting {chatbot}. When the user enters the Chatbot via "
    "different entry points, proactively suggest one \"hot question\" (common intent) that the user is most "
    "likely to ask right now, based on the user related information.\n\n"
    "Below is {information} information:\n{context}\n\n"
    "Based on the above information, generate one question that users may encounter. Please describe in one "
    "sentence the question that the user may want to ask.\n\n"
    "Requirements: Keep the question between {min_words}-{max_words} words.\n"
    "The user question is:")


# the paper's wording; a dataset's contract may name its own chatbot and context sections (``assistant:``)
CHATBOT = "an e-commerce Chatbot"
INFORMATION = "User Context Information, User Profile, Order Status and User Historical Behaviour"


@dataclass(frozen=True)
class ReasonerPrompt:
    """Builds the chat messages (and a plain-text rendering) of the query-reasoner prompt. ``chatbot`` and
    ``information`` are the domain's words (``DataContract.assistant``); a reasoner keeps the ones it was
    built with (its ``ltp`` settings), so every encoder of it renders the prompt it learned."""
    min_words: int = 10
    max_words: int = 20
    system: str = SYSTEM_PROMPT
    chatbot: str = CHATBOT
    information: str = INFORMATION

    def __post_init__(self):
        if not 0 < self.min_words <= self.max_words:
            raise ValueError(f"need 0 < min_words <= max_words, got {self.min_words}, {self.max_words}")

    def user(self, context: str) -> str:
        if not context or not context.strip():
            raise ValueError("context is empty: verbalize the user's features first "
                             "(rgalign.features.verbalize.Verbalizer.context)")
        return USER_TEMPLATE.format(context=context, min_words=self.min_words, max_words=self.max_words,
                                    chatbot=self.chatbot, information=self.information)

    def messages(self, context: str) -> list[dict[str, str]]:
        """``[{"role": "system", ...}, {"role": "user", ...}]`` for a tokenizer's chat template."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user(context)}]

    def plain(self, context: str) -> str:
        """The prompt as the paper prints it (``##System Prompt`` / ``##User Prompt``)."""
        return f"##System Prompt\n{self.system}\n\n##User Prompt\n{self.user(context)}"
