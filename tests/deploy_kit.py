#!/usr/bin/env python3
"""Validators for the deployment kit (deploy/), run by tests/deploy_kit.rs.

    deploy_kit.py ecs FILE   check an ECS task definition against the
                             RegisterTaskDefinition input model that botocore
                             ships (offline): ParamValidator (required members,
                             unknown members, types, lengths and ranges) plus
                             the enums, which ParamValidator leaves out.
                             Exit 0 and one "ok" line, or 1 and the errors.
    deploy_kit.py hcl FILE   parse FILE as HCL2 (python-hcl2) and print it as
                             JSON (exit 1 with the parser's error).

Needs python3-botocore (Debian) and python-hcl2 (PyPI); scripts/install-testbed.sh
puts both into /opt/tusk-test/venv, whose python the test runs.
"""

import json
import sys


def enum_errors(value, shape, path):
    """Values outside a string enum anywhere below `shape`."""
    errors = []
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                errors += enum_errors(value[name], member, f"{path}.{name}")
    elif kind == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            errors += enum_errors(item, shape.member, f"{path}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            errors += enum_errors(item, shape.value, f"{path}.{key}")
    elif kind == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        errors.append(f"{path}: {value!r} is not one of {', '.join(shape.enum)}")
    return errors


def ecs(path):
    import botocore
    import botocore.session
    import botocore.validate

    with open(path) as f:
        params = json.load(f)
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = botocore.validate.ParamValidator().validate(params, shape)
    errors = [report.generate_report()] if report.has_errors() else []
    errors += enum_errors(params, shape, "task definition")
    if errors:
        print(f"{path}: not a valid RegisterTaskDefinition input (botocore {botocore.__version__}):")
        print("\n".join(errors))
        sys.exit(1)
    print(f"ok: {path} is a valid ecs RegisterTaskDefinition input "
          f"(botocore {botocore.__version__}, API {model.api_version})")


def hcl(path):
    import hcl2

    # Plain values: no comment or block markers, heredocs as strings, string
    # values and block labels without their quotes (python-hcl2 8.x).
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True)
    with open(path) as f:
        try:
            parsed = hcl2.load(f, serialization_options=options)
        except Exception as e:  # the parser's own exception types vary by version
            print(f"{path}: not HCL2: {e}", file=sys.stderr)
            sys.exit(1)
    json.dump(parsed, sys.stdout, indent=1, default=str)
    print()


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("ecs", "hcl"):
        sys.exit(__doc__)
    {"ecs": ecs, "hcl": hcl}[sys.argv[1]](sys.argv[2])


if __name__ == "__main__":
    main()
