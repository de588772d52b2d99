"""The summary of results says only what its runs show: every figure is the table's or a difference of two of its
accuracies, and every comparison is between settings that trained alike and differ in what the line names."""

import json
import re
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

import report
from MNIST_model import Config, setting

SETTINGS = [1, 2, 3, 4, 5, 12, 'best', 'Adam-0', 'Adam-0.001', 'Adam-0.01', 'AdamW-0', 'AdamW-0.01', 'Adadelta-0.01']
SWEEP = Config.groups['wd']


def made_up(name, accuracy, seeds=(0,), epochs=10, trained=None, train_loss=0.01, val_loss=(0.1,), diverged=None):
    """A setting's runs as the evaluation hands them to the report, one per seed (`accuracy` one, or one per seed):
    `trained` of `epochs` epochs, the training loss falling to `train_loss`, the validation losses `val_loss` (the
    last repeated), and its best epoch at the lowest."""
    trained = trained or epochs
    val_loss = [*val_loss, *[val_loss[-1]] * trained][:trained]
    losses = [dict(epoch=e, train_loss=train_loss * (trained + 1 - e), val_loss=v) for e, v in enumerate(val_loss, 1)]
    best = 1 + val_loss.index(min(val_loss))
    results = []
    for seed, acc in zip(seeds, accuracy if isinstance(accuracy, list) else [accuracy] * len(seeds)):
        history = dict(hyperparameters={**setting(name), 'epochs': epochs}, epochs=losses, seed=seed, best_epoch=best)
        history |= {'training_time': 1.0} | ({'diverged': diverged} if diverged else {})
        state = 'diverged' if diverged else 'finished' if trained == epochs else 'stopped'
        results.append({'accuracy': acc, 'epoch': best, 'history': history, 'state': state})
    return results


def trained_as(results):
    """What two rows must share to be compared: epochs planned and trained, where they diverged, and the seeds."""
    h = results[0]['history']
    return h['hyperparameters']['epochs'], len(h['epochs']), h.get('diverged'), [r['history']['seed'] for r in results]


def named(line):
    """The settings that a line of the summary names: #N, or λ = L in a line on the sweep."""
    if sweep := re.match(r'- In the weight-decay sweep with (\w+), ', line):
        return [f'{sweep[1]}-{lam}' for lam in re.findall(r'λ = ([\d.e-]*\d)', line)]
    return re.findall(r'#([\w.-]*\w)', line)


def check_report(found):
    """The rows, table and summary that the report makes of the runs `found` of each setting hold to what they
    claim; returns the summary's lines."""
    rows = {n: report.row_runs(results) for n, results in found.items()}
    for n, row in rows.items():  # a row averages runs of one setting that trained alike, and says how many
        assert all(any(r is s for s in found[n]) for r in row)
        assert len({json.dumps([r['history']['hyperparameters'], *trained_as([r])[:3]]) for r in row}) == 1
        assert report.table_row(row)['Accuracy'].endswith(f' ({len(row)} seeds)') == (len(row) > 1)
    runs = {str(n): row for n, row in rows.items()}
    cells = {n: report.table_row(row)['Accuracy'] for n, row in runs.items()}
    mean = {n: float(cell.split('%')[0]) for n, cell in cells.items()}
    shown = set(re.findall(r'\d+\.\d\d%', ' '.join(cells.values())))
    hyper = {n: row[0]['history']['hyperparameters'] for n, row in runs.items()}
    plan = {n: trained_as(row) for n, row in runs.items()}
    best, text = report.summary(rows, Config)
    assert '0.00 point' not in text  # ties are said as ties
    if text.startswith('- Setting #') and ' is not compared ' not in text.splitlines()[0]:
        assert named(text.splitlines()[0])[0] == str(best)  # the mistakes shown are those of the summary's best
    refused = set()
    for line in text.splitlines():
        assert line.startswith('- ') and line.endswith('.')
        assert set(re.findall(r'\d+\.\d\d%', line)) <= shown, line  # every accuracy is the table's
        names = named(line)
        assert names and set(names) <= set(mean), line
        assert len({n in SWEEP for n in names}) == 1, line  # the sweep apart from the other settings
        if ' is not compared with ' in line:  # and rightly not
            assert all(plan[names[0]] != plan[n] for n in names[1:]), line
            refused.add(names[0])
            continue
        assert all(plan[n] == plan[names[0]] for n in names), line  # like with like
        differ = {k for k in hyper[names[0]] if any(hyper[n][k] != hyper[names[0]][k] for n in names)}
        if line.startswith('- At λ = '):
            assert differ in ({'optimizer'}, {'optimizer', 'lr'}), line
        if re.match(r'- With \w+, λ', line):
            assert differ == {'weight_decay'} and hyper[names[1]]['weight_decay'] == 0, line
        if sweep := re.match(r'- In the weight-decay sweep with (\w+), ', line):
            assert differ == {'weight_decay'} and len(names) == 2, line
            if ' tied ' not in line and plan.get(f'{sweep[1]}-0') == plan[names[0]]:
                assert f'{sweep[1]}-0' in names, line  # compared with its own λ = 0
        for difference in re.findall(r'(\d+\.\d\d) points?', line):  # of the two settings named first
            assert float(difference) == round(abs(mean[names[0]] - mean[names[1]]), 2), line
        if ' tied ' in line:
            assert mean[names[0]] == mean[names[1]], line
        elif ' below ' in line:
            assert mean[names[0]] < mean[names[1]], line
        elif re.search(r' beat | led | above | lead of ', line):
            assert mean[names[0]] > mean[names[1]], line
        if 'underfitting' in line:  # the final training losses, mean over seeds, as the histories hold them
            loss = [statistics.mean(r['history']['epochs'][-1]['train_loss'] for r in runs[n]) for n in names]
            assert re.search(r'training loss of (\S+) against (\S+):', line).groups() == tuple(f'{x:.2g}' for x in loss)
            assert loss[0] > loss[1] and mean[names[0]] < mean[names[1]], line
        if 'overfitting' in line:  # in every run of each setting named: the validation loss up, the training loss down
            for epochs in (r['history']['epochs'] for n in names for r in runs[n]):
                low = min(epochs, key=lambda e: e['val_loss'])
                assert epochs[-1]['val_loss'] > 1.1 * low['val_loss'] and epochs[-1]['train_loss'] < low['train_loss']
    for group in (Config.groups['all'], [*Config.groups['extra'], 'best'], Config.groups['wd']):
        section = [str(n) for n in group if str(n) in plan]
        for a in section:  # two settings of a section that trained otherwise: the report says it cannot compare them
            assert all(plan[a] == plan[b] or {a, b} & refused for b in section), text
    return [line.removeprefix('- ').removesuffix('.') for line in text.splitlines()]


# How the runs of a setting trained: planned and trained epochs, whether they diverged, and the seeds; then a run of
# one seed: epochs it trained short of the others, its validation losses, test accuracy and final training loss. Each
# from a few values, so that ties, settings trained alike and otherwise, and runs left out of a row are common.
PLAN = st.tuples(st.sampled_from([2, 3]), st.integers(1, 3), st.booleans(), st.sets(st.integers(0, 2), min_size=1))
RUN = st.tuples(
    st.sampled_from([0, 0, 0, 1]),
    st.lists(st.sampled_from([0.01, 0.02, 0.05]), min_size=3, max_size=3),
    st.sampled_from([0.9, 0.9711, 0.978, 0.9781, 0.9786, 0.9787]),
    st.sampled_from([0.01, 0.1]),
)


@st.composite
def runs_of_settings(draw):
    """Runs of a few settings, among them parts of the sweep: most as a plan that they share, some otherwise."""
    found, shared = {}, draw(PLAN)
    for name, plan in draw(
        st.dictionaries(st.sampled_from(SETTINGS), st.none() | PLAN, min_size=1, max_size=7)
    ).items():
        epochs, trained, diverged, seeds = plan or shared
        found[name] = []
        for seed in sorted(seeds):
            short, val_loss, accuracy, train_loss = draw(RUN)
            n = max(1, min(trained, epochs) - short)
            diverged_at = n + 1 if diverged and n < epochs else None
            found[name] += made_up(name, accuracy, [seed], epochs, n, train_loss, val_loss[:n], diverged_at)
    return found


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(runs_of_settings())
def test_every_figure_is_the_tables_and_every_comparison_is_between_settings_trained_alike(found):
    check_report(found)


def test_the_four_settings_in_at_most_120_words_one_claim_a_line():
    rising = (0.1, 0.08, 0.07, 0.08, 0.09, 0.1)  # the validation loss turns up after epoch 3
    found = {1: made_up(1, 0.978, val_loss=rising), 2: made_up(2, 0.9787, train_loss=1e-4, val_loss=rising)}
    found |= {3: made_up(3, 0.9711, train_loss=0.02), 4: made_up(4, 0.972, train_loss=0.09)}
    lines = check_report(found)
    assert lines == [
        'Setting #2 led with 97.87%, ahead of Setting #1',  # by the margin that the next line gives
        'At λ = 0, Adam (#2) beat Adadelta (#1) by 0.07 points',
        'At λ = 0.01, Adam (#4) beat Adadelta (#3) by 0.09 points',
        'With Adadelta, λ = 0.01 (#3) scored 0.69 points below λ = 0 (#1), with a final training loss of 0.02 '
        'against 0.01: underfitting',
        'With Adam, λ = 0.01 (#4) scored 0.67 points below λ = 0 (#2), with a final training loss of 0.09 '
        'against 0.0001: underfitting',
        'The validation loss rose while the training loss fell, overfitting, in #1, #2',
        'In single runs, the lead of #2 over #1 may be chance; `--seeds 3` measures the spread',
    ]
    assert len(' '.join(lines).split()) <= 120


def test_the_sweep_is_compared_with_its_own_lambda_0_and_only_where_it_trained_two():
    found = {2: made_up(2, 0.9787, epochs=2), 'Adam-0.01': made_up('Adam-0.01', 0.9398, epochs=2)}
    assert check_report(found) == [  # one λ: no best λ, and Setting 2 is not its λ = 0, which is named as missing
        'Setting #2 reached 97.87%',
        'Setting #Adam-0.01 is not compared with λ = 0, which the sweep lacks for it',
    ]
    found |= {'Adam-0': made_up('Adam-0', 0.9421, epochs=2), 'Adam-0.001': made_up('Adam-0.001', 0.9801, epochs=2)}
    assert (
        check_report(found)[-1]
        == 'In the weight-decay sweep with Adam, λ = 0.001 led with 98.01%, 3.80 points above λ = 0'
    )


def test_settings_trained_for_other_epochs_are_named_and_not_compared():
    found = {1: made_up(1, 0.9516, epochs=3, train_loss=0.1), 3: made_up(3, 0.9288, epochs=1, train_loss=0.3)}
    assert check_report(found) == [
        'Of the settings trained for 3 of 3 epochs, seed 0, Setting #1 reached 95.16%',
        'Setting #3 (1 of 1 epochs, seed 0) is not compared with #1 (3 of 3 epochs, seed 0)',
    ]


def test_a_lead_among_settings_trained_alike_says_so_beside_a_better_setting_trained_otherwise():
    found = {n: made_up(n, acc, epochs=2) for n, acc in ((1, 0.9585), (3, 0.9566), (4, 0.9398))}
    found[2] = made_up(2, 0.9787, epochs=100)
    assert check_report(found)[0] == (
        'Of the settings trained for 2 of 2 epochs, seed 0, Setting #1 led with 95.85%, ahead of Setting #3'
    )


def test_a_row_averages_only_the_seeds_that_trained_alike_and_says_how_many():
    runs = made_up(2, 0.9, seeds=[0], epochs=1) + made_up(2, [0.9787, 0.979], seeds=[1, 2], epochs=3)
    row = report.row_runs(runs)
    assert [r['history']['seed'] for r in row] == [1, 2]
    cells = report.table_row(row)
    assert cells['Epoch'] == 3 and cells['Accuracy'] == '97.88% ± 0.02% (2 seeds)'
    stopped = made_up(2, 0.9787, seeds=[0], epochs=3) + made_up(2, [0.95, 0.96], seeds=[1, 2], epochs=3, trained=1)
    assert [r['history']['seed'] for r in report.row_runs(stopped)] == [0]  # finished, though alone


def test_ties_are_said_as_ties():
    found = {n: made_up(n, acc) for n, acc in ((1, 0.978), (2, 0.978), (3, 0.9711), (4, 0.9711))}
    lines = check_report(found)
    assert lines[:3] == [
        'Setting #1 and Setting #2 tied at 97.80%',
        'At λ = 0, Adadelta (#1) and Adam (#2) tied at 97.80%',
        'At λ = 0.01, Adadelta (#3) and Adam (#4) tied at 97.11%',
    ]
    assert not any('lead' in line for line in lines)


def test_means_over_seeds_are_compared_as_the_table_rounds_them():
    found = {1: made_up(1, [0.978, 0.9781, 0.9781], [0, 1, 2]), 2: made_up(2, [0.9786, 0.9786, 0.9787], [0, 1, 2])}
    lines = check_report(found)  # 97.8067% and 97.8633%: 97.81% and 97.86% in the table
    assert lines[0] == 'At λ = 0, Adam (#2) beat Adadelta (#1) by 0.05 points'  # which the lead would say again
    assert (
        lines[-1]
        == 'Over 3 seeds, the lead of #2 over #1, 0.05 points, is more than the spread between them (± up to 0.01%)'
    )
