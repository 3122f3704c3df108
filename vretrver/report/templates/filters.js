// The filter lives in the address (?only=failures,tools) so that it survives paging; page links carry it.
function filterState(){
  return {failures:document.getElementById('only-failures').checked,
          tools:document.getElementById('only-tools').checked};
}
function filterQuery(s){
  const on=[]; if(s.failures) on.push('failures'); if(s.tools) on.push('tools');
  return on.length ? '?only='+on.join(',') : '';
}
function applyFilters(){
  const s=filterState();
  let shown=0;
  document.querySelectorAll('.q').forEach(q=>{
    const hide=(s.failures&&q.dataset.failure!=='1')||(s.tools&&q.dataset.tools!=='1');
    q.classList.toggle('hidden',hide); if(!hide) shown++;
  });
  document.getElementById('shown').textContent=shown;
  const key=(s.failures?'f':'')+(s.tools?'t':'');
  const query=filterQuery(s);
  document.querySelectorAll('a[data-page]').forEach(a=>{
    a.href=a.dataset.page+query;
    const n=key ? Number(a.dataset['n'+key]) : Number(a.dataset.n);
    a.title=n+' matching queries';
    a.classList.toggle('empty', n===0);
  });
  document.querySelectorAll('option[data-page]').forEach(o=>{o.value=o.dataset.page+query;});
  if(history.replaceState) history.replaceState(null,'',location.pathname+query+location.hash);
}
function initFilters(){
  const only=(new URLSearchParams(location.search).get('only')||'').split(',');
  document.getElementById('only-failures').checked=only.includes('failures');
  document.getElementById('only-tools').checked=only.includes('tools');
  applyFilters();
}
document.addEventListener('DOMContentLoaded', initFilters);
