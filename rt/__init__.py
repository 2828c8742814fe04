"""mixerc.rt: what generated code calls at run time.

A generated torch module is standalone (the helpers it needs are copied into it); a generated
Triton module imports this package and nothing of the code generators. It imports `mixerc.ir`
(errors) only.
"""
