"""llama-cpp-python's OpenAI-shaped results, for people moving over: create_completion and
create_chat_completion return (or stream) the same dict shapes."""
from __future__ import annotations

import time
import uuid


def _usage(c) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.tokens),
            "total_tokens": c.prompt_tokens + len(c.tokens)}


def completion(model, prompt, *, stream: bool = False, **kw):
    head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
            "model": str(model.path)}
    result = model.generate(prompt, stream=stream, **kw)
    if not stream:
        return {**head, "choices": [{"text": result.text, "index": 0, "logprobs": None,
                                     "finish_reason": result.finish_reason}], "usage": _usage(result)}

    def chunks():
        for piece in result:
            yield {**head, "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]}
        yield {**head, "choices": [{"text": "", "index": 0, "logprobs": None,
                                    "finish_reason": result.completion.finish_reason}]}
    return chunks()


def chat_completion(model, messages, *, stream: bool = False, **kw):
    head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": str(model.path)}
    result = model.chat(messages, stream=stream, **kw)
    if not stream:
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": result.finish_reason}], "usage": _usage(result)}

    def chunks():
        chunk = {**head, "object": "chat.completion.chunk"}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                     "finish_reason": None}]}
        for piece in result:
            yield {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                         "finish_reason": None}]}
        yield {**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                     "finish_reason": result.completion.finish_reason}]}
    return chunks()
