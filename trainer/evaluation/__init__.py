"""`repirl eval`: best-of-N curves, step-error localisation, GSM8K reranking, policy accuracy and search cost, all
through the service's own search code (repirl.search) and scorers (repirl.scoring). See docs/results.md."""
