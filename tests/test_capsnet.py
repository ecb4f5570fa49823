"""The CapsNet family: Sabour's routing, class capsules, decoder, losses, the auxiliary-loss hook and the models."""
import pytest
import torch
import torch.nn.functional as F

import timm

import timm_routing  # noqa: F401
from timm_routing.layers import (
    CapsuleDecoder, ClassCapsuleHead, DigitCapsules, attach_aux_loss, class_mask, dynamic_routing, route_over_parents,
    squash,
)
from timm_routing.loss import CapsuleLoss, MarginLoss, margin_loss, multi_hot, reconstruction_loss


def _sabour_reference(u, iters):
    """Procedure 1 of Sabour et al., loop by loop in float64: u is (J, N, D), the votes of N children for J parents."""
    J, N, D = u.shape
    b = torch.zeros(N, J, dtype=torch.float64)
    for r in range(iters):
        c = torch.stack([torch.softmax(b[i], 0) for i in range(N)])  # (N, J), over parents
        v = torch.stack([squash(sum(c[i, j] * u[j, i] for i in range(N))) for j in range(J)])
        if r < iters - 1:
            for i in range(N):
                for j in range(J):
                    b[i, j] += u[j, i] @ v[j]
    return v, c.T


@pytest.mark.parametrize('iters', [1, 2, 3])
def test_route_over_parents_matches_sabour_procedure(iters):
    torch.manual_seed(0)
    u = torch.randn(2, 4, 5, 3, dtype=torch.float64)  # (B, J, N, D)
    v, c = route_over_parents(u, iters)
    for b in range(2):
        v_ref, c_ref = _sabour_reference(u[b], iters)
        torch.testing.assert_close(v[b], v_ref)
        torch.testing.assert_close(c[b], c_ref)
    torch.testing.assert_close(c.sum(1), torch.ones(2, 5, dtype=torch.float64))  # sum over parents
    v2, c2 = dynamic_routing(u, iters, activation='squash', softmax_over='parents')
    torch.testing.assert_close(v2, v)
    torch.testing.assert_close(c2, c)


def test_route_over_parents_gradcheck_and_bad_arguments():
    u = torch.randn(1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: route_over_parents(t, 3)[0], (u,))
    with pytest.raises(ValueError, match='softmax_over'):
        dynamic_routing(u, softmax_over='columns')
    with pytest.raises(ValueError, match='iters >= 1'):
        dynamic_routing(u, iters=0, softmax_over='parents')
    with pytest.raises(ValueError, match='activation'):
        dynamic_routing(u, activation=torch.tanh, softmax_over='parents')


def test_class_capsule_head_is_the_routing_of_per_type_votes():
    torch.manual_seed(0)
    head = ClassCapsuleHead(8, num_classes=3, capsule_dim=4, class_capsule_dim=5, iters=2, lam=1.5).double()
    x = torch.randn(2, 8, 3, 2, dtype=torch.float64)
    v, c = head.route(x)
    assert v.shape == (2, 3, 5) and c.shape == (2, 3, 2, 3, 2)
    assert sum(p.numel() for p in head.parameters()) == 8 * 3 * 5  # one 5x4 matrix per capsule type and class
    # reference: child capsule (type t, position p) = channels 4t..4t+3 at p; vote for class k = W[t, k] @ child
    weight = head.votes.weight.view(2, 3, 5, 4)  # (T, K, D, capsule_dim)
    children = x.view(2, 2, 4, 6)  # (B, T, capsule_dim, positions)
    for k in range(3):
        votes = torch.einsum('tdc,btcp->btpd', weight[:, k], children).reshape(2, 12, 5)
        v_ref, c_ref = dynamic_routing(votes, 2, 1.5, activation='squash')
        torch.testing.assert_close(v[:, k], v_ref)
        torch.testing.assert_close(c[:, k].reshape(2, 12), c_ref)
    torch.testing.assert_close(c.sum((2, 3, 4)), torch.ones(2, 3, dtype=torch.float64))
    assert (v.norm(dim=-1) < 1).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_chs=64, num_classes=10, capsule_dim=24), 'does not divide'),
    (dict(in_chs=64, num_classes=0), 'num_classes'),
    (dict(in_chs=64, num_classes=10, lam=-1.), 'lambda'),
])
def test_class_capsule_head_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassCapsuleHead(**kwargs)


def test_digit_capsules_uniform_couplings_at_one_iteration_and_child_count_check():
    torch.manual_seed(0)
    digits = DigitCapsules(num_children=6, in_dim=4, num_classes=3, out_dim=2, iters=1)
    x = torch.randn(2, 6, 4)
    v, c = digits.route(x)
    torch.testing.assert_close(c, torch.full((2, 3, 6), 1 / 3))
    votes = torch.einsum('knoi,bni->bkno', digits.weight, x)
    torch.testing.assert_close(v, squash(votes.sum(2) / 3))
    with pytest.raises(ValueError, match='expects 6 child capsules, got 5'):
        digits(x[:, :5])


def test_attach_aux_loss_adds_the_auxiliary_gradient_only():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    a = torch.randn(3, requires_grad=True)
    x = w * 2
    aux = (a ** 2).sum()
    y = attach_aux_loss(x, aux)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(w.grad, torch.full((3,), 2.))
    torch.testing.assert_close(a.grad, 2 * a.detach())
    with pytest.raises(ValueError, match='scalar'):
        attach_aux_loss(x, a)
    with torch.no_grad():
        assert attach_aux_loss(x, aux) is x


def test_decoder_reads_only_the_masked_capsule():
    torch.manual_seed(0)
    decoder = CapsuleDecoder(num_classes=3, capsule_dim=4, img_size=(5, 6), in_chans=2)
    caps = torch.randn(2, 3, 4)
    mask = class_mask(caps.norm(dim=-1), torch.tensor([1, 2]))
    out = decoder(caps, mask)
    assert out.shape == (2, 2, 5, 6) and ((out > 0) & (out < 1)).all()
    other = caps.clone()
    other[0, [0, 2]] = torch.randn(2, 4)
    other[1, :2] = torch.randn(2, 4)
    torch.testing.assert_close(decoder(other, mask), out)
    torch.testing.assert_close(class_mask(torch.tensor([[0.1, 0.7, 0.2]])), torch.tensor([[0., 1., 0.]]))


def test_margin_loss_by_hand():
    lengths = torch.tensor([[0.95, 0.5, 0.05], [0.2, 0.3, 0.8]])
    target = torch.tensor([0, 2])
    # row 0: present 0 (0.95 > 0.9); absent 0.5 * (0.4^2 + 0) ; row 1: present (0.9-0.8)^2, absent 0.5*(0.1^2+0.2^2)
    expected = (0.5 * 0.16 + (0.01 + 0.5 * (0.01 + 0.04))) / 2
    torch.testing.assert_close(margin_loss(lengths, target), torch.tensor(expected))
    torch.testing.assert_close(MarginLoss()(lengths, target), torch.tensor(expected))
    # two objects per image: indices and a multi-hot give the same loss
    pairs = torch.tensor([[0, 1], [2, 1]])
    torch.testing.assert_close(margin_loss(lengths, pairs), margin_loss(lengths, multi_hot(pairs, 3)))
    with pytest.raises(ValueError, match='outside'):
        margin_loss(lengths, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match='integers'):
        margin_loss(lengths, torch.tensor([0., 1.]))


def test_reconstruction_and_capsule_loss():
    recon, images = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    torch.testing.assert_close(reconstruction_loss(recon, images), torch.tensor(0.0005 * 4))
    with pytest.raises(ValueError, match='differ in shape'):
        reconstruction_loss(recon, images[:, :, :1])
    out = dict(lengths=torch.tensor([[0.95, 0.05]]), reconstruction=recon[:1])
    loss = CapsuleLoss()(out, torch.tensor([0]), images[:1])
    torch.testing.assert_close(loss['loss'], loss['margin'] + loss['reconstruction'])
    torch.testing.assert_close(loss['reconstruction'], torch.tensor(0.002))
    with pytest.raises(ValueError, match='input images'):
        CapsuleLoss()(out, torch.tensor([0]))
    with pytest.raises(ValueError, match='recon_weight'):
        CapsuleLoss(recon_weight=-1)


@pytest.mark.parametrize('name, kwargs, params', [
    ('capsnet_resnet20', {}, 2_526_768),
    ('capsnet_resnet20', dict(img_size=36), 2_215_168),
    ('capsnet_resnet20_lam5', {}, 2_215_168),
    ('capsnet', {}, 8_215_568),
    ('capsnet', dict(img_size=40), 13_475_648),
])
def test_parameter_counts_match_the_papers(name, kwargs, params):
    model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == params
    if name.startswith('capsnet_resnet20'):
        assert params <= 2.6e6
        # the routing adds only the vote matrices: 64 channels x 10 classes x 16 neurons
        assert sum(p.numel() for p in model.head.parameters()) == 10_240


@pytest.mark.parametrize('name', ['capsnet_resnet20', 'capsnet'])
def test_outputs_are_capsule_lengths_and_pre_logits_the_capsules(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.rand(2, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        capsules, couplings = model.route(x)
        out = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert capsules.shape == (2, 10, 16)
    torch.testing.assert_close(out, capsules.norm(dim=-1))
    torch.testing.assert_close(pre, capsules.flatten(1))
    assert ((out >= 0) & (out < 1)).all()
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pre)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.decoder.fc1.in_features == 5 * 16
    model.reset_classifier(0, '')
    assert model(x).dim() == 4


def test_training_mode_attaches_the_reconstruction_loss():
    """Under train.py: criterion(model(x)) back-propagates criterion + recon_weight * reconstruction loss."""
    torch.manual_seed(0)
    model = timm.create_model('capsnet_resnet20', img_size=20).train()
    x, y = torch.rand(3, 1, 20, 20), torch.tensor([1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads['decoder.fc3.weight'].abs().sum() > 0
    model.zero_grad()
    # the same objective written out: the decoder reconstructs the longest capsule
    torch.manual_seed(0)
    out = model.forward_train(x)
    loss = F.cross_entropy(out['lengths'], y) + reconstruction_loss(out['reconstruction'], x)
    loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-7, msg=n)
    assert type(model(x).grad_fn).__name__ == '_AttachAuxLossBackward'
    model.eval()
    assert type(model(x).grad_fn).__name__ != '_AttachAuxLossBackward'  # evaluation: no auxiliary loss


def test_forward_train_reconstructs_the_target_capsules():
    torch.manual_seed(0)
    model = timm.create_model('capsnet_resnet20', img_size=20).eval()
    x = torch.rand(2, 1, 20, 20)
    out = model.forward_train(x, torch.tensor([3, 4]))
    expected = model.decoder(out['capsules'], F.one_hot(torch.tensor([3, 4]), 10).float())
    torch.testing.assert_close(out['reconstruction'], expected)
    pair = model.forward_train(x, torch.tensor([[3, 5], [4, 1]]))  # MultiMNIST: both digits' capsules
    expected = model.decoder(out['capsules'], multi_hot(torch.tensor([[3, 5], [4, 1]]), 10))
    torch.testing.assert_close(pair['reconstruction'], expected)
    loss = CapsuleLoss()(out, torch.tensor([3, 4]), x)['loss']
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('name, kwargs, match', [
    ('capsnet_resnet20', dict(capsule_dim=24), 'does not divide'),
    ('capsnet_resnet20', dict(global_pool='avg'), "global_pool 'capsule'"),
    ('capsnet_resnet20', dict(num_classes=5, num_capsules=7), 'num_capsules=7'),
    ('capsnet_resnet20', dict(recon_weight=-1.), 'recon_weight'),
    ('capsnet_resnet20', dict(drop_rate=0.2), 'drop_rate'),
    ('capsnet', dict(img_size=20), 'at least 25x25'),
])
def test_bad_config_is_a_clear_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


def test_capsnet_rejects_another_input_size_naming_the_cause():
    model = timm.create_model('capsnet').eval()
    with pytest.raises(ValueError, match='1152 child capsules, got 2048'):
        model(torch.rand(1, 1, 32, 32))


def test_capsnet_features_are_its_two_convolutions():
    model = timm.create_model('capsnet', features_only=True)
    feats = model(torch.rand(1, 1, 28, 28))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 20, 20), (1, 256, 6, 6)]
    assert model.feature_info.channels() == [256, 256]


def test_capsnet_resnet20_heatmaps_per_class():
    from timm_routing.explain import coupling_maps, find_routing_pool
    model = timm.create_model('capsnet_resnet20').eval()
    assert isinstance(find_routing_pool(model), ClassCapsuleHead)
    maps = coupling_maps(model, torch.rand(2, 1, 40, 40), upsample=False)
    assert maps.shape == (2, 10, 10, 10)
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(2, 10))  # per class, over the positions


def test_timm_classification_task_trains_with_margin_loss():
    """timm's own ClassificationTask with MarginLoss as criterion (the Python route to Sabour's margin loss)."""
    from timm.task import ClassificationTask
    torch.manual_seed(0)
    model = timm.create_model('capsnet_resnet20', img_size=20).train()
    task = ClassificationTask(model, criterion=MarginLoss(), verbose=False)
    x, y = torch.rand(4, 1, 20, 20), torch.tensor([0, 1, 2, 3])
    result = task(x, y)
    torch.testing.assert_close(result['loss'], margin_loss(result['output'].detach(), y))
    result['loss'].backward()
    assert model.decoder.fc1.weight.grad.abs().sum() > 0  # reconstruction attached to the output


def test_heatmaps_take_one_group_per_image():
    from timm_routing.explain import heatmaps
    maps = torch.rand(3, 4, 5, 5)
    chosen = torch.tensor([2, 0, 3])
    expected = torch.stack([heatmaps(maps[i:i + 1], group=int(g))[0] for i, g in enumerate(chosen)])
    torch.testing.assert_close(heatmaps(maps, group=chosen), expected)
    with pytest.raises(ValueError, match='one index in'):
        heatmaps(maps, group=torch.tensor([0, 4, 1]))
