"""Imports flow one way: main -> the states -> the orchestration (context) -> the building blocks
-> the basics. A module may import only from layers below its own, so no building block ever
reaches back up into the code that uses it. A new module must be given its layer here."""
import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    # 0: constants, no project imports at all
    {'utils.labels'},
    # 1: where tensors live (the one home of device moves and host reads)
    {'utils.device'},
    # 1b: no project imports but the constants and the device helpers
    {'utils.errors', 'utils.transforms', 'utils.losses', 'utils.metrics', 'utils.inference',
     'utils.failure_watch'},
    # 2: writing files, several processes, stop signals; reading images and labels as files say
    {'utils.files', 'utils.distributed', 'utils.versions', 'utils.stopping', 'utils.images',
     'utils.label_encoding', 'utils.flags'},
    # 2b: a dataset as its description file says
    {'utils.dataset_description'},
    # 3: data (and the one list reader), network, checkpoints, experiment outputs and their checks
    {'data_processing', 'models.deeplab_v2', 'utils.checkpoints', 'utils.experiment', 'utils.guards'},
    # 4: building blocks over those (and the models package, which re-exports the network);
    # predictions as files
    {'utils.data_check', 'utils.training', 'utils.cbc', 'models', 'utils.predictions'},
    # 4b: the split rule, which reads its list with data_processing's reader and the class shares
    # of its sets with the data check's
    {'generate_splits'},
    # 5: the orchestration every state shares; the synthetic set, split by the paper's rule
    {'utils.context', 'utils.synthetic'},
    # 6: the states
    {'utils.supervised', 'utils.pseudo_labeling', 'utils.evaluation'},
    # 7: self-training runs a supervised warm-up first
    {'utils.self_training'},
    # 8: programs
    {'main', 'paper_table', 'visualize', 'convert_coco', 'cityscapes_data_lists', 'describe_dataset', 'predict'},
    # 9: the demo runs main.py and draws with visualize
    {'demo'},
]


def project_modules():
    files = list(REPO_ROOT.glob('*.py')) + list((REPO_ROOT / 'utils').glob('*.py')) + \
        list((REPO_ROOT / 'models').glob('*.py'))
    modules = {}
    for path in files:
        parts = path.relative_to(REPO_ROOT).with_suffix('').parts
        name = '.'.join(parts[:-1]) if parts[-1] == '__init__' else '.'.join(parts)
        modules[name] = path
    return modules


def imports_of(path, known):
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f'{node.module}.{alias.name}' for alias in node.names}
    return {name for name in found if name in known}


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    missing = set(project_modules()) - layered - {'utils'}
    assert not missing, f'give these modules a layer in tests/test_layers.py: {sorted(missing)}'


def test_imports_only_go_down():
    layer_of = {name: index for index, names in enumerate(LAYERS) for name in names}
    modules = project_modules()
    upward = []
    for name, path in modules.items():
        if name == 'utils':
            continue
        for imported in imports_of(path, set(modules) | set(layer_of)):
            if imported != name and imported in layer_of and layer_of[imported] >= layer_of[name]:
                upward.append(f'{name} (layer {layer_of[name]}) imports {imported} (layer {layer_of[imported]})')
    assert not upward, '\n'.join(upward)


def test_one_definition_of_the_ignore_index():
    definitions = [path.name for path in project_modules().values()
                   if any(line.startswith('IGNORE_INDEX = 255') for line in path.read_text().splitlines())]
    assert definitions == ['labels.py']
