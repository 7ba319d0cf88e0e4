"""Charts and the HTML report, made from the results database alone."""
