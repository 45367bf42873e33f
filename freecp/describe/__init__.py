"""Class descriptions from an LLM: prompts, an OpenAI-compatible client, cleaning, local serving, runs.

Entry point: ``freecp.describe.run.describe_vocabulary``; the results live in
``freecp.stores.descriptions.DescriptionCache``.
"""
