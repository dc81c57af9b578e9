"""kpiguard pipeline: sub-packages by role (data, io, eval, stages, serving, batch, tools, orchestration),
with the ``kpiguard`` CLI, the params schema and the runtime set-up at the top; docs/pipeline.md maps it."""
