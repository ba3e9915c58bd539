"""AutoDQ: event-level precision/recall of video descriptions judged by an LLM (Tarsier paper, section 4.2)."""
