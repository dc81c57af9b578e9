"""The DVC stages, one thin ``run(params, ...)`` each: ingest -> validate -> windows -> train -> evaluate
-> register. A stage composes data/, io/, eval/ and serving/; it never imports another stage."""
