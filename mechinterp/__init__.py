"""mechinterp: the small shared package behind the chapter scripts.

Modules mirror the concepts: ``loading`` (model + SAE), ``encoding`` (text -> features),
``prompts`` (prompt files), ``stats`` (contrasts between prompt groups), ``plotting`` (figures),
``records`` (run records), ``io`` (atomic writes), ``toyworld`` (the synthetic demo with planted features).
Nothing heavy is imported here, so ``import mechinterp`` is instant.
"""
