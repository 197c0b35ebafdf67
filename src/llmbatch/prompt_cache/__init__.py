"""Prompt-cache-aware runs: a shared prefix paid for once.

    config = RunConfig(input="in.jsonl", output="out.jsonl", prompt_cache="auto")   # default

The parts: `prefix` (what a request shares with others, by hash), `census` (the shared
prefixes of an input, in bounded memory), `transform` (a provider's cache settings put on a
request: OpenAI's `prompt_cache_key`, Anthropic's `cache_control` breakpoints), `schedule`
(requests of one prefix sent together, a new prefix warmed up by one request first), and
`limits` (the providers' rules). `llmbatch.pipeline.prompt_cache` puts them in front of an
executor.
"""
